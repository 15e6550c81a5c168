"""Netlink datagrams read by hand: the messages one ``recv`` returned (the nftables tables' and the
taps' rtnetlink requests answer with them)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The messages of one datagram: (type, sequence number, what follows the 16-byte header),
    until one is too short to be a message."""
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            return
        yield mtype, seq, data[off + 16 : off + length]
        off += (length + 3) & ~3


def error_code(body: bytes) -> int:
    """An NLMSG_ERROR message's error: 0 for an acknowledgement, else minus an errno."""
    return struct.unpack_from("=i", body)[0]
