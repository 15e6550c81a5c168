"""The node's child processes: started, spoken to, watched, restarted and given their state again.

The agent runs its dataplane workers (``dataplane.linux.worker``) and its
metadata proxy (``vrouter.services.metadata.worker``) the same way, as
``Child``: ``python -m MODULE FD`` in the compute namespace, FD one end of a
socketpair whose other end the agent holds.  One framing for both: a message
is a 4-byte length and a pickle; the agent sends ``(seq, request)`` and the
child answers each with a ``Reply`` in order, and may send messages of its
own between them (a dataplane worker's trapped packets), which go to
``on_message``.  A child exits when the socket closes, so an agent that dies,
even by SIGKILL, takes its children with it.

When a child dies (its socket closes), what waits for an answer fails with
``ChildError``, and the child is started again after ``restart_delay``
seconds, then again until it starts; ``setup`` gives each new process what it
must know (its configuration, and the state the agent keeps for it), as it
did the first.  A request that gets no answer within its timeout fails; with
``kill_on_timeout`` the process is killed as well, and so restarted.

The child's side is ``serve``: it reads the requests, hands each to a
handler, and answers with what the handler returns, or the text of the
``Refusal`` it raised (any other exception is logged with its traceback and
answered by its text too).  Both sides run on uvloop where it is installed (a
dependency), else on asyncio's loop (``run``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vrouter.children")

MAX_MESSAGE = 64 << 20
_LEN = struct.Struct("!I")


class ChildError(Exception):
    """A child refused a request, is not running, or did not answer in time."""


class Refusal(Exception):
    """Raised by a child's handler: a request it will not carry out; the text goes back as is."""


@dataclass(frozen=True)
class Reply:
    seq: int
    value: Any = None
    error: str = ""


def encode(msg: object) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader) -> object:
    """The next message; EOFError when the other end closed or broke the framing."""
    try:
        (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        if n > MAX_MESSAGE:
            raise EOFError("a message of %d bytes" % n)
        return pickle.loads(await reader.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError):
        raise EOFError("closed") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise EOFError("not a message: %s" % e) from None


async def spawn(module: str) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``python -m module FD``; its process and the agent's end of the socketpair.  OSError
    if it cannot be started."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, str(theirs.fileno()), pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_MESSAGE)
    return proc, reader, writer


class Child:
    """One child process, as the agent sees it."""

    def __init__(self, name: str, module: str, setup: Callable[[Child], Awaitable[None]], on_message: Callable[[object], None] | None = None,
                 restart_delay: float = 0.5, kill_on_timeout: bool = False) -> None:  # fmt: skip
        self.name = name  # "dataplane worker 1", "the metadata proxy process": for messages
        self.module = module
        self.setup = setup
        self.on_message = on_message
        self.restart_delay = restart_delay
        self.kill_on_timeout = kill_on_timeout
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._out: asyncio.StreamWriter | None = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._up = False
        self._stopping = False

    @property
    def up(self) -> bool:
        return self._up

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None and self._up else 0

    async def start(self) -> None:
        """Start the process and set it up; ChildError (naming it and why) if it cannot be."""
        try:
            self.proc, reader, self._out = await spawn(self.module)
        except OSError as e:
            raise ChildError("cannot start %s (%s -m %s): %s" % (self.name, sys.executable, self.module, e)) from None
        self._up = True
        self._reader = asyncio.get_running_loop().create_task(self._read(reader))
        try:
            await self.setup(self)
        except ChildError as e:
            await self._kill()
            raise ChildError("%s did not start: %s" % (self.name, e)) from None
        log.info("%s up (pid %d)", self.name, self.proc.pid)

    def send(self, msg: object) -> asyncio.Future[Any]:
        """Send a request; the future is its answer (ChildError if refused or the child went)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._out is None or not self._up:
            fut.set_exception(ChildError("%s is not running" % self.name))
            return fut
        self._seq += 1
        self._waiting[self._seq] = fut
        self._out.write(encode((self._seq, msg)))
        return fut

    async def call(self, msg: object, timeout: float) -> Any:  # noqa: ANN401 - the request's answer
        """The answer to ``msg`` within ``timeout`` seconds; ChildError otherwise."""
        try:
            return await asyncio.wait_for(self.send(msg), timeout)
        except TimeoutError:
            if self.kill_on_timeout and self.proc is not None and self.proc.returncode is None:
                self.proc.kill()  # a process that does not answer is started again
                raise ChildError("%s does not answer (nothing within %.0f s); it is restarted" % (self.name, timeout)) from None
            raise ChildError("%s did not answer in %g s" % (self.name, timeout)) from None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_message(reader)
                if isinstance(msg, Reply):
                    fut = self._waiting.pop(msg.seq, None)
                    if fut is not None and not fut.done():
                        if msg.error:
                            fut.set_exception(ChildError(msg.error))
                        else:
                            fut.set_result(msg.value)
                elif self.on_message is not None:
                    try:
                        self.on_message(msg)
                    except Exception:
                        log.exception("a message from %s could not be handled", self.name)
        except (EOFError, OSError) as e:
            if not self._stopping:
                code = self.proc.returncode if self.proc is not None else None
                log.error("%s is gone (%s%s); restarting it", self.name, e, "" if code is None else ", exit status %s" % code)
        finally:
            self._up = False
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChildError("%s is gone" % self.name))
            self._waiting.clear()
        if self._restart is None and not self._stopping:  # (a process that failed to start is the restart's own)
            self._restart = asyncio.get_running_loop().create_task(self._restart_loop())

    async def _restart_loop(self) -> None:
        try:
            await self._kill()
            while not self._stopping:
                await asyncio.sleep(self.restart_delay)  # no tight loop if it cannot start
                try:
                    await self.start()
                except ChildError as e:
                    log.error("%s; trying again", e)
                    continue
                self.restarts += 1
                break
        finally:
            self._restart = None
        if not self._up and not self._stopping:  # it died again before this restart was over
            self._restart = asyncio.get_running_loop().create_task(self._restart_loop())

    async def _kill(self) -> None:
        self._up = False
        if self._out is not None:
            self._out.close()
            self._out = None
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)  # it exits when its socket closes
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        await self._kill()
        if self._reader is not None:
            self._reader.cancel()


# -- the child's side ------------------------------------------------------------------------------

Handler = Callable[[object], Awaitable[object]]


async def serve(fd: int, handle: Handler, on_push: Callable[[Callable[[object], None]], None] | None = None) -> None:
    """Answer the agent's requests on socket ``fd`` with ``handle`` until the agent closes it.
    ``on_push`` is given the function that sends a message of the child's own."""
    reader, out = await asyncio.open_connection(sock=socket.socket(fileno=fd), limit=MAX_MESSAGE)
    if on_push is not None:
        on_push(lambda msg: out.write(encode(msg)))
    while True:
        try:
            framed = await read_message(reader)
        except EOFError:
            return  # the agent is gone or stopped us
        if not isinstance(framed, tuple) or len(framed) != 2 or not isinstance(framed[0], int):
            log.error("not a request from the agent: %r", type(framed).__name__)
            return
        seq, msg = framed
        try:
            value = await handle(msg)
        except Refusal as e:
            out.write(encode(Reply(seq, None, str(e))))
        except Exception as e:  # said to the agent, which logs it or refuses what it was doing
            log.exception("%s failed", type(msg).__name__)
            out.write(encode(Reply(seq, None, str(e) or type(e).__name__)))
        else:
            out.write(encode(Reply(seq, value)))
        try:
            await out.drain()
        except (ConnectionError, OSError):
            return


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
