"""NAT rewriting: addresses and ports change, and every checksum stays right.

A wrong checksum fails silently on a real host (the kernel drops the segment),
so each case is checked against scapy recomputing the checksums from scratch.
"""

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dataplane.core.nat import Rewrite, apply_delta, csum_delta, internet_checksum
from dataplane.core.packet import Malformed, parse


def recomputed(pkt: bytes) -> bytes:
    """The same packet with scapy computing every checksum anew."""
    p = IP(pkt)
    del p[IP].chksum
    if TCP in p:
        del p[TCP].chksum
    if UDP in p and p[UDP].chksum != 0:
        del p[UDP].chksum
    return bytes(p)


def ipb(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


METADATA = Rewrite(6, ipb("10.1.1.3"), ipb("169.254.169.254"), 40000, 80, ipb("169.254.0.3"), ipb("10.10.0.2"), 40000, 8097)


def rewrite_packet(rw: Rewrite, pkt: bytes) -> bytes:
    buf = bytearray(pkt)
    rw.apply(buf, parse(pkt).ihl)
    return bytes(buf)


@pytest.mark.parametrize(
    "l4",
    [
        TCP(sport=40000, dport=80, flags="S", seq=1, options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]),
        TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"),
        TCP(sport=40000, dport=80, flags="A") / Raw(b"x"),  # odd payload length
    ],
)
def test_tcp_metadata_rewrite_checksums(l4):
    pkt = bytes(IP(src="10.1.1.3", dst="169.254.169.254", ttl=64) / l4)
    out = rewrite_packet(METADATA, pkt)
    p = IP(out)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport) == ("169.254.0.3", "10.10.0.2", 40000, 8097)
    assert out == recomputed(out), "checksums differ from a full recomputation"


def test_ip_options_shift_the_l4_header():
    pkt = bytes(IP(src="10.1.1.3", dst="169.254.169.254", options=b"\x01\x01\x01\x00") / TCP(sport=40000, dport=80))
    assert parse(pkt).ihl == 24
    out = rewrite_packet(METADATA, pkt)
    assert IP(out)[TCP].dport == 8097
    assert out == recomputed(out)


def test_inverse_restores_the_original():
    reply = bytes(IP(src="10.10.0.2", dst="169.254.0.3") / TCP(sport=8097, dport=40000, flags="SA") / Raw(b"HTTP/1.1 200 OK\r\n"))
    out = rewrite_packet(METADATA.inverse(), reply)
    p = IP(out)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport) == ("169.254.169.254", "10.1.1.3", 80, 40000)
    assert out == recomputed(out)
    assert METADATA.inverse().inverse() == METADATA


def test_udp_rewrite_and_zero_checksum_kept():
    rw = Rewrite(17, ipb("10.1.1.3"), ipb("169.254.169.7"), 33596, 53, ipb("10.10.0.2"), ipb("10.10.0.1"), 57139, 53)
    pkt = bytes(IP(src="10.1.1.3", dst="169.254.169.7") / UDP(sport=33596, dport=53) / Raw(b"\x12\x34query"))
    out = rewrite_packet(rw, pkt)
    assert IP(out)[UDP].sport == 57139
    assert out == recomputed(out)
    nocsum = IP(src="10.1.1.3", dst="169.254.169.7") / UDP(sport=33596, dport=53, chksum=0) / Raw(b"q")
    out = rewrite_packet(rw, bytes(nocsum))
    assert IP(out)[UDP].chksum == 0


def test_incremental_update_matches_full_checksum_randomised():
    rnd = random.Random(1624)
    for _ in range(300):
        data = bytearray(rnd.randbytes(40))
        data[10:12] = b"\0\0"
        data[10:12] = internet_checksum(bytes(data)).to_bytes(2, "big")
        old = bytes(data[12:20])
        new = rnd.randbytes(8)
        c = int.from_bytes(data[10:12], "big")
        data[12:20] = new
        data[10:12] = apply_delta(c, csum_delta(old, new)).to_bytes(2, "big")
        assert internet_checksum(bytes(data)) == 0


def test_csum_delta_is_the_sum_of_words():
    # csum_delta reads each string as one number; the definition is a sum over 16-bit words
    def by_words(old: bytes, new: bytes) -> int:
        total = sum((~int.from_bytes(old[i : i + 2], "big") & 0xFFFF) + int.from_bytes(new[i : i + 2], "big") for i in range(0, len(old), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    rnd = random.Random(1071)
    cases = [(b"", b""), (b"\xff\xff", b"\0\0"), (b"\xff" * 8, b"\0" * 8), (b"\0\0", b"\xff\xff"), (b"\x12\x34", b"\x12\x34"),
             (b"\0\x01", b"\0\0"), (b"\xff\xfe", b"\xff\xff")]  # fmt: skip
    for _ in range(2000):
        n = rnd.choice((2, 4, 8, 32))
        cases.append((rnd.randbytes(n), rnd.randbytes(n)))
        cases.append((b"\xff" * (n - 2) + rnd.randbytes(2), rnd.choice((b"\0", b"\xff")) * (n - 2) + rnd.randbytes(2)))
    for old, new in cases:
        assert csum_delta(old, new) == by_words(old, new), (old, new)
    with pytest.raises(ValueError):
        csum_delta(b"\0\0", b"\0")


def test_apply4_equals_apply_randomised():
    # the per-packet path's rewrite of 20-byte-header IPv4 TCP and UDP packets gives the same bytes
    # as the general one, and right checksums, over random addresses, ports, payloads and
    # checksums (UDP's 0, no checksum, included), so every carry of the one-fold arithmetic occurs
    rnd = random.Random(4)

    def addr() -> str:
        return ".".join(str(rnd.randrange(256)) for _ in range(4))

    for n in range(400):
        proto = (6, 17)[n % 2]
        src, dst, nsrc, ndst = addr(), addr(), addr(), addr()
        sp, dp, nsp, ndp = (rnd.randrange(65536) for _ in range(4))
        rw = Rewrite(proto, ipb(src), ipb(dst), sp, dp, ipb(nsrc), ipb(ndst), nsp, ndp)
        payload = Raw(rnd.randbytes(rnd.randrange(0, 60)))
        if proto == 6:
            l4 = TCP(sport=sp, dport=dp, seq=rnd.getrandbits(32), flags="PA") / payload
        else:
            l4 = UDP(sport=sp, dport=dp, chksum=0 if n % 10 == 1 else None) / payload
        pkt = bytes(IP(src=src, dst=dst, id=rnd.randrange(65536), ttl=rnd.randrange(1, 256)) / l4)
        out = rw.apply4(pkt)
        assert out == rewrite_packet(rw, pkt)
        assert out == recomputed(out)
        if proto == 17 and n % 10 == 1:
            assert IP(out)[UDP].chksum == 0


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "shorter"),
        (b"\x45" + b"\0" * 10, "shorter"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP())[:30], "total length"),
        (b"\x70" + b"\0" * 39, "not IPv4 or IPv6"),
        (b"\x60" + b"\0" * 30, "shorter than an IPv6"),
        (b"\x60\0\0\0\0\x10\x06\x40" + b"\0" * 32, "payload length"),
        (b"\x44" + bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP())[1:], "IHL"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP()), "fragment"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=10) / Raw(b"x" * 8)), "fragment"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=6) / Raw(b"x" * 10)), "truncated TCP"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(dataofs=15)), "data offset"),
        (bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=17) / Raw(b"x" * 4)), "truncated UDP"),
    ],
)
def test_malformed_packets_are_named(raw, why):
    with pytest.raises(Malformed, match=why):
        parse(raw)


def test_ipv6_tcp_rewrite_checksums():
    from scapy.layers.inet6 import IPv6

    rw = Rewrite(6, bytes.fromhex("fe80000000000000000000fffe000003"), bytes.fromhex("fe8000000000000000000000a9fea9fe"), 40000, 80,
                 bytes.fromhex("fd00a9fea9fe00000000000000000003"), bytes.fromhex("fd00a9fea9fe00000000000000000001"), 40000, 8097)  # fmt: skip
    pkt = bytes(IPv6(src="fe80::ff:fe00:3", dst="fe80::a9fe:a9fe") / TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n\r\n"))
    p = parse(pkt)
    assert (p.ihl, p.proto, p.sport, p.dport) == (40, 6, 40000, 80)
    buf = bytearray(pkt)
    rw.apply(buf, p.ihl)
    out = IPv6(bytes(buf))
    assert (out.src, out.dst, out[TCP].dport) == ("fd00:a9fe:a9fe::3", "fd00:a9fe:a9fe::1", 8097)
    again = IPv6(bytes(buf))
    del again[TCP].chksum
    assert bytes(again) == bytes(buf), "TCP checksum differs from a full recomputation"


def test_icmp_echo_key_uses_identifier():
    p = parse(bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(type=8, id=0x1234, seq=1)))
    assert (p.proto, p.sport, p.dport) == (1, 0x1234, 0)
