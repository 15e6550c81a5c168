"""The metadata proxy in a process of its own, beside the agent's dataplane.

On one core the agent was CPU-bound with the NFQUEUE dataplane and the proxy
in one event loop, while the second core idled; the real vRouter also keeps
its dataplane (the kernel module) and the agent's proxy apart.  The agent
starts ``python -m vrouter.services.metadata.worker FD`` in the compute namespace with one
end of a socketpair and drives it with JSON lines, each answered by one line:

* ``{"op": "config", ...}``: listen addresses and port, secret, timeouts,
  fairness, TLS files.  The answer is ``{"ok": true}`` once the proxy
  listens, or ``{"ok": false, "error": ...}``.
* ``{"op": "identities", "map": {metadata_ip: [instance, project, vm_ip,
  port_uuid, vm_name]}}``: who is behind each metadata IP (IPv4 and IPv6).
* ``{"op": "upstream", "upstream": {"ips": [...], "port": N} | null}``: where
  Nova is; a fabric IP is picked at random per connection.
* ``{"op": "stats"}``: the proxy's counters, its load and its memory.

Every update is acknowledged, so that when ``vrouter port add`` returns the
proxy already knows the port.  The worker exits when the socket closes: an
agent that dies, even by SIGKILL, takes its proxy with it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import signal
import socket
import ssl
import sys
from typing import Any

from vrouter.agent.procinfo import own_memory
from vrouter.services.metadata.proxy import Fairness, Identity, MetadataProxy, Upstream, client_tls

log = logging.getLogger("vrouter.metadata")

RESTART_DELAY = 1.0
WORKER_MODULE = "vrouter.services.metadata.worker"


class ProxyWorkerError(Exception):
    """The proxy process could not start or does not answer."""


# -- the agent's side -------------------------------------------------------------------------


class ProxyWorker:
    """Starts the proxy process, keeps it told, restarts it if it dies."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.identities: dict[str, list[str]] = {}
        self.upstream: dict[str, Any] | None = None
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, str(theirs.fileno()), pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as e:
            ours.close()
            raise ProxyWorkerError("cannot start the metadata proxy process (%s -m %s): %s" % (sys.executable, WORKER_MODULE, e)) from None
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_connection(sock=ours)
        answer = await self._call({"op": "config", **self.config}, timeout=30)
        if not answer.get("ok"):
            await self._kill()
            raise ProxyWorkerError(answer.get("error", "the metadata proxy did not start"))
        await self._call({"op": "identities", "map": self.identities})
        await self._call({"op": "upstream", "upstream": self.upstream})

    async def _call(self, msg: dict, timeout: float = 10.0) -> dict:
        async with self._lock:
            if self._writer is None or self._reader is None:
                raise ProxyWorkerError("the metadata proxy process is not running")
            try:
                self._writer.write(json.dumps(msg).encode() + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except (OSError, TimeoutError) as e:
                # a late answer would be taken for the next one's: this process is done with;
                # the watchdog starts another
                self._close_pipe()
                if self._proc is not None and self._proc.returncode is None:
                    self._proc.kill()
                why = "nothing within %.0f s" % timeout if isinstance(e, TimeoutError) else str(e)
                raise ProxyWorkerError("the metadata proxy process does not answer (%s); it is restarted" % why) from None
            if not line:
                raise ProxyWorkerError("the metadata proxy process has exited")
            try:
                return json.loads(line)
            except ValueError:
                raise ProxyWorkerError("the metadata proxy process answered %r" % line[:200]) from None

    async def set_identities(self, identities: dict[str, list[str]]) -> None:
        self.identities = identities
        await self._tell({"op": "identities", "map": identities})

    async def set_upstream(self, upstream: dict[str, Any] | None) -> None:
        self.upstream = upstream
        await self._tell({"op": "upstream", "upstream": upstream})

    async def _tell(self, msg: dict) -> None:
        try:
            await self._call(msg)
        except ProxyWorkerError as e:  # the watchdog restarts it with the current state
            log.error("%s", e)

    async def stats(self) -> dict:
        try:
            return await self._call({"op": "stats"}, timeout=3)  # well inside the CLI's own 10 s
        except ProxyWorkerError as e:
            return {"error": str(e)}

    async def _watchdog(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                log.error("the metadata proxy process (pid %d) exited with %s: restarting it", proc.pid, code)
            self._close_pipe()
            await asyncio.sleep(RESTART_DELAY)  # no tight loop if it cannot start
            try:
                await self._spawn()
                self.restarts += 1
                log.info("metadata proxy process restarted (pid %d)", self.pid)
            except (ProxyWorkerError, OSError) as e:
                log.error("could not restart the metadata proxy process: %s", e)
                self._proc = None

    def _close_pipe(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _kill(self) -> None:
        self._close_pipe()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 5)  # it exits when the socket closes
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        await self._kill()


# -- the proxy's side -------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.proxy: MetadataProxy | None = None
        self.identities: dict[str, Identity] = {}
        self.upstreams: list[Upstream] = []
        self.tls: ssl.SSLContext | None = None

    def identify(self, peer_ip: str) -> Identity | None:
        return self.identities.get(peer_ip.split("%", 1)[0])

    def upstream(self) -> Upstream | None:
        if not self.upstreams:
            return None
        return self.upstreams[0] if len(self.upstreams) == 1 else random.choice(self.upstreams)

    async def handle(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "config":
            return await self._configure(msg)
        if op == "identities":
            self.identities = {ip: Identity(*v) for ip, v in msg["map"].items()}
            return {"ok": True}
        if op == "upstream":
            up = msg.get("upstream")
            self.upstreams = [Upstream(ip, int(up["port"]), self.tls) for ip in up["ips"]] if up else []
            return {"ok": True}
        if op == "stats" and self.proxy is not None:
            return {"ok": True, "stats": vars(self.proxy.stats), "load": self.proxy.load(), "memory": own_memory(), "pid": os.getpid()}
        return {"ok": False, "error": "unknown operation %r" % op}

    async def _configure(self, c: dict) -> dict:
        try:
            if c.get("tls"):
                self.tls = client_tls(c["tls"].get("ca"), c["tls"].get("cert"), c["tls"].get("key"))
        except (OSError, ssl.SSLError) as e:
            return {"ok": False, "error": "[METADATA] TLS files: %s" % e}
        try:
            self.proxy = MetadataProxy(
                self.identify, self.upstream, c["secret"], read_timeout=float(c["read_timeout"]), fairness=Fairness(**c["fairness"])
            )
            await self.proxy.start(c["hosts"], int(c["port"]))
            gc.freeze()  # start-up's objects stay: out of the collector's full passes
        except OSError as e:
            return {"ok": False, "error": "metadata proxy cannot listen on %s port %s: %s" % (", ".join(c["hosts"]), c["port"], e.strerror or e)}
        except (KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": "metadata proxy configuration: %s" % e}
        return {"ok": True}


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    worker = _Worker()
    try:
        while line := await reader.readline():
            try:
                answer = await worker.handle(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                answer = {"ok": False, "error": "bad request: %s" % e}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    if worker.proxy is not None:
        await worker.proxy.stop()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops us, by closing the socket
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[proxy]: %(message)s")
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m vrouter.services.metadata.worker FD (started by vrouter agent)", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
