"""The TCP options the proxy sets on its sockets towards VMs, to spend fewer segments (each crosses the
dataplane twice) and to reset when a fault says so.  On a transport that is not TCP (tests over
other transports) each does nothing."""

from __future__ import annotations

import asyncio
import socket
import struct


def delayed_acks(sock: socket.socket) -> None:
    """A listening socket: delayed ACKs from the first segment (accepted connections inherit it), so
    that the ACK of a request goes with its answer instead of in a segment of its own, one crossing
    of the dataplane fewer per request on a new connection.  A partial request is acknowledged at
    once (``ack_now``), so a client waiting on that ACK does not stall."""
    _set(sock, socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)


def ack_now(transport: asyncio.BaseTransport) -> None:
    """Acknowledge what has arrived now.  A VM whose client wrote part of a request and, with
    Nagle's algorithm, holds the rest until that part is acknowledged would otherwise wait for the
    delayed-ACK timer (40 ms or more).  TCP_QUICKACK 2 sends the pending ACK at once and (being
    even) leaves the connection in delayed-ACK mode, so the rest of the request is acknowledged by
    the answer."""
    _set(transport.get_extra_info("socket"), socket.IPPROTO_TCP, socket.TCP_QUICKACK, 2)


def hold_for_fin(transport: asyncio.BaseTransport) -> None:
    """What is written next ends the connection: hold it (TCP_CORK) until the close, so that the end
    of the answer and the FIN leave in one segment.  A VM making a connection per request makes
    about ten crossings of the dataplane."""
    _set(transport.get_extra_info("socket"), socket.IPPROTO_TCP, socket.TCP_CORK, 1)


def reset_at_close(transport: asyncio.BaseTransport) -> None:
    """Closing sends a RST (SO_LINGER 0), not a FIN."""
    _set(transport.get_extra_info("socket"), socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _set(sock: socket.socket | None, level: int, option: int, value: int | bytes) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(level, option, value)
    except (OSError, AttributeError):
        pass  # not TCP: nothing to set
