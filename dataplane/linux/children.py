"""The node's child processes, driven over a socketpair: how the agent starts one and how one runs.

The agent starts its dataplane workers (``dataplane.linux.worker``) and its
metadata proxy (``vrouter.services.metadata.worker``) the same way:
``python -m MODULE FD`` in the compute namespace, FD one end of a socketpair,
the agent holding the other as asyncio streams.  Each runs on uvloop where it
is installed (a dependency), else on asyncio's loop; so does the agent.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Coroutine
from typing import Any


async def spawn(module: str, limit: int) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``python -m module FD``; its process and the agent's end of the socketpair (streams
    that buffer up to ``limit`` bytes).  OSError if it cannot be started."""
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
    reader, writer = await asyncio.open_connection(sock=ours, limit=limit)
    return proc, reader, writer


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
