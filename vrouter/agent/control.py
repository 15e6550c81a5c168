"""The agent's control socket: the CLI's requests, one message per line (``vrouter.messages``).

A Unix socket in the agent's state directory, so the CLI reaches the agent
from any namespace; root's alone (0600), made so before anyone could reach
it: bound in a fresh 0700 directory, made 0600, then moved into place (which
also replaces a stale socket at once).  Each request is decoded into its
dataclass and handed to the agent's handler for that operation; the handler's answer (a dataclass, or
a list of them) goes back, once ``settle`` (if given) has returned: the agent's
dataplane workers have applied what the operation changed.  An error a user can act on is the text of one of
the ``expected`` exceptions; anything else is logged and answered as an
internal error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from vrouter.messages.control import OP_OF, OPS
from vrouter.messages.wire import MessageError, Refused, decode_answer, decode_request, encode_answer, encode_request

log = logging.getLogger("vrouter.control")

Handler = Callable[[Any], Any | Awaitable[Any]]
MAX_REQUEST = 1 << 20
T = TypeVar("T")


class AgentNotRunning(Exception):
    """No agent answers on the control socket."""


class NotPermitted(AgentNotRunning):
    """The control socket is there, and not this user's to use (it is root's)."""


class RequestFailed(Exception):
    """The agent refused a request; the message is the agent's."""


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler], expected: tuple[type[Exception], ...],
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        missing = set(OPS) - set(handlers)
        if missing:
            raise ValueError("no handler for %s" % ", ".join(sorted(missing)))
        self.path = path
        self.handlers = handlers
        self.expected = expected
        self.settle = settle
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        private = tempfile.mkdtemp(prefix=".s", dir=os.path.dirname(self.path) or ".")  # 0700: nobody else reaches what is in it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bound = os.path.join(private, "agent.sock")
            sock.bind(bound)
            os.chmod(bound, 0o600)
            os.replace(bound, self.path)  # the socket keeps its inode, and so its listener
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        finally:
            shutil.rmtree(private, ignore_errors=True)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)

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
                    writer.write(encode_answer(error="request too large"))
                    await writer.drain()
                    break
                if not line:
                    break
                writer.write(await self._dispatch(line))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> bytes:
        try:
            op, request = decode_request(line, OPS)
        except MessageError as e:
            return encode_answer(error="bad request: %s" % e)
        try:
            try:
                result = self.handlers[op](request)
                if asyncio.iscoroutine(result):
                    result = await result
            finally:
                if self.settle is not None:  # what the operation changed is in force when it answers
                    await self.settle()
        except self.expected as e:
            return encode_answer(error=str(e))
        except Exception as e:
            log.exception("control operation %s failed", op)
            return encode_answer(error="internal error: %s" % e)
        return encode_answer(result)


def call(path: str, request: Any, timeout: float = 10.0) -> Any:
    """Send one request to the agent at ``path``; return its typed answer, or raise
    AgentNotRunning / RequestFailed."""
    op = OP_OF[type(request)]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning("no vrouter agent is running (nothing listens on %s)" % path) from None
        except PermissionError:
            raise NotPermitted("%s: permission denied: the agent's control socket is root's alone (run this as root)" % path) from None
        s.sendall(encode_request(op, request))
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
    try:
        return decode_answer(OPS[op][1], data)
    except Refused as e:
        raise RequestFailed(str(e)) from None
    except MessageError as e:
        raise RequestFailed("the agent's answer does not fit this vrouter command (%s): is it another version?" % e) from None
