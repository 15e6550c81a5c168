"""Verdict messages for NFQUEUE: the bytes the kernel parses, and the order a drain's go in."""

import socket
import struct

import pytest

from dataplane.linux.verdicts import NF_ACCEPT, NF_DROP, VerdictWriter, verdict_message

VERDICT, BATCH = (3 << 8) | 1, (3 << 8) | 3


def parse(blob: bytes) -> list[tuple]:
    """Netlink messages back into (type, queue, verdict, id, payload); checks lengths, flags, padding."""
    out = []
    while blob:
        length, kind, flags, seq, pid = struct.unpack_from("=IHHII", blob)
        assert length % 4 == 0 and length <= len(blob) and flags == 1 and seq == pid == 0
        family, version, res_id = struct.unpack_from("=BBH", blob, 16)
        assert family == socket.AF_UNSPEC and version == 0
        alen, atype = struct.unpack_from("=HH", blob, 20)
        assert (alen, atype) == (12, 2)
        verdict, pid_ = struct.unpack_from("!II", blob, 24)
        payload = None
        if length > 32:
            plen, ptype = struct.unpack_from("=HH", blob, 32)
            assert ptype == 10 and 32 + plen <= length < 32 + plen + 4
            payload = blob[36 : 32 + plen]
            assert blob[32 + plen : length] == b"\0" * (length - 32 - plen)  # padding
        out.append((kind, socket.ntohs(res_id), verdict, pid_, payload))
        blob = blob[length:]
    return out


@pytest.mark.parametrize("payload", [None, b"", b"x", b"xy", b"xyz", b"wxyz", bytes(range(256)) * 6])
def test_message_layout(payload):
    msg = verdict_message(7, 0xDEADBEEF, NF_ACCEPT, payload)
    assert parse(msg) == [(VERDICT, 7, NF_ACCEPT, 0xDEADBEEF, payload)]
    assert parse(verdict_message(65535, 1, NF_ACCEPT, batch=True)) == [(BATCH, 65535, NF_ACCEPT, 1, None)]


def writer(limit: int = 64):
    writes: list[bytes] = []

    def write(fd: int, data: bytes) -> int:
        assert fd == 99
        writes.append(bytes(data))  # the writer reuses its buffer
        return len(data)

    return VerdictWriter(99, 3, limit=limit, write=write), writes


def test_one_write_per_drain_in_packet_order():
    w, writes = writer()
    w.accept(10)
    w.accept(11)
    w.verdict(12, NF_ACCEPT, b"nat")
    w.accept(13)
    w.verdict(14, NF_DROP)
    w.verdict(15, NF_DROP)
    w.accept(16)
    assert writes == []
    w.flush()
    assert len(writes) == 1 and w.writes == 1
    # a run of unchanged accepts is one batch verdict, written before the next packet's own verdict
    assert parse(writes[0]) == [
        (BATCH, 3, NF_ACCEPT, 11, None),
        (VERDICT, 3, NF_ACCEPT, 12, b"nat"),
        (BATCH, 3, NF_ACCEPT, 13, None),
        (VERDICT, 3, NF_DROP, 14, None),
        (VERDICT, 3, NF_DROP, 15, None),
        (BATCH, 3, NF_ACCEPT, 16, None),
    ]
    w.flush()  # nothing waiting: nothing written
    assert len(writes) == 1


def test_no_more_than_limit_verdicts_wait():
    w, writes = writer(limit=4)
    for i in range(1, 10):
        w.accept(i)
    assert [parse(b) for b in writes] == [[(BATCH, 3, NF_ACCEPT, 4, None)], [(BATCH, 3, NF_ACCEPT, 8, None)]]
    w.verdict(10, NF_ACCEPT, b"p")
    w.flush()
    assert parse(writes[-1]) == [(BATCH, 3, NF_ACCEPT, 9, None), (VERDICT, 3, NF_ACCEPT, 10, b"p")]


def test_large_payloads_are_written_before_64_kib_gather():
    w, writes = writer()
    for i in range(5):
        w.verdict(i, NF_ACCEPT, b"x" * 20000)
    assert len(writes) == 1 and len(parse(writes[0])) == 4  # 80 KB would be over: written at the 4th
    w.flush()
    assert len(parse(writes[1])) == 1


def test_a_failed_write_is_counted_not_raised():
    def fail(fd: int, data: bytes) -> int:
        raise OSError(105, "No buffer space available")

    w = VerdictWriter(99, 3, write=fail)
    w.accept(1)
    w.flush()
    w.verdict(2, NF_DROP)
    w.flush()
    assert w.errors == 2 and w.writes == 0


def test_writer_bytes_equal_the_reference_messages():
    # the writer packs into templates; verdict_message builds each message from its fields
    w, writes = writer()
    expected = []
    for i, n in enumerate([0, 1, 2, 3, 4, 5, 7, 8, 1500, 1499]):
        payload = bytes(range(n % 256)) * (n // 256 + 1)
        payload = payload[:n]
        w.accept(1000 + 2 * i)
        w.verdict(1001 + 2 * i, NF_ACCEPT if n % 2 else NF_DROP, payload if n % 2 or n == 0 else None)
        expected.append(verdict_message(3, 1000 + 2 * i, NF_ACCEPT, batch=True))
        expected.append(verdict_message(3, 1001 + 2 * i, NF_ACCEPT if n % 2 else NF_DROP, payload if n % 2 or n == 0 else None))
    w.flush()
    assert b"".join(writes) == b"".join(expected)
