"""The agent's control socket: one JSON request per line, one JSON answer per line.

A Unix socket in the agent's state directory, so the CLI reaches the agent
from any namespace.  Request ``{"op": "port.add", "args": {...}}``; answer
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "message"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("vrouter.agent.control")

Handler = Callable[[dict], Any | Awaitable[Any]]
MAX_REQUEST = 1 << 20


class AgentNotRunning(Exception):
    """No agent answers on the control socket."""


class RequestFailed(Exception):
    """The agent refused a request; the message is the agent's."""


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler], expected: tuple[type[Exception], ...]) -> None:
        self.path = path
        self.handlers = handlers
        self.expected = expected
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._answer(writer, {"ok": False, "error": "request too large"})
                    break
                if not line:
                    break
                await self._answer(writer, await self._dispatch(line))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            op, args = req["op"], req.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": "bad request: %s" % e}
        handler = self.handlers.get(op)
        if handler is None:
            return {"ok": False, "error": "unknown operation %r" % op}
        try:
            result = handler(args)
            if asyncio.iscoroutine(result):
                result = await result
        except self.expected as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:
            log.exception("control operation %s failed", op)
            return {"ok": False, "error": "internal error: %s" % e}
        return {"ok": True, "result": result}

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, answer: dict) -> None:
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()


def call(path: str, op: str, args: dict | None = None, timeout: float = 10.0) -> Any:
    """Send one request; return the result, or raise AgentNotRunning / RequestFailed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning("no vrouter agent is running (nothing listens on %s)" % path) from None
        s.sendall(json.dumps({"op": op, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise AgentNotRunning("the vrouter agent closed the control connection (is it stopping?)")
            data += chunk
    except TimeoutError:
        raise AgentNotRunning("the vrouter agent did not answer within %.0f s" % timeout) from None
    finally:
        s.close()
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RequestFailed(answer.get("error", "request failed"))
    return answer.get("result")
