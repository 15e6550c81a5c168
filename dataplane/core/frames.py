"""Ethernet frames the agent sends a guest itself, and the ARP it reads from one.

Pure: bytes in, bytes out (IPv6's are ``frames6``'s).  The agent answers a
guest's DHCP, DNS, ARP and ICMP echo from packets the dataplane traps (as the
vRouter agent answers them from pkt0), and sends its answers straight out of the
guest's tap as whole frames: from the vRouter MAC 00:00:5e:00:01:00, with IP
headers and checksums made here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from dataplane.core.nat import internet_checksum
from dataplane.core.packet import ICMP, UDP, Malformed

VROUTER_MAC = bytes.fromhex("00005e000100")
BROADCAST_MAC = b"\xff" * 6
ETH_IP = 0x0800
ETH_ARP = 0x0806
ETH_IP6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
# the vRouter's IPv6 link-local address, from which it sends router advertisements
ROUTER_LL6 = bytes.fromhex("fe80000000000000000000005e000100")
ALL_NODES6 = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")

_ETH = struct.Struct("!6s6sH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(mac: bytes) -> str:
    return ":".join("%02x" % b for b in mac)


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return _ETH.pack(dst, src, ethertype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 packet (no options, DF clear, id 0, as the vRouter agent sends its answers)."""
    head = _IP4.pack(0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0, src, dst)
    return head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:] + payload


def udp4(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram with its checksum over the IPv4 pseudo-header."""
    length = 8 + len(data)
    pseudo = src + dst + struct.pack("!BBH", 0, UDP, length)
    csum = internet_checksum(pseudo + _UDP.pack(sport, dport, length, 0) + data) or 0xFFFF
    return _UDP.pack(sport, dport, length, csum) + data


def ipv4_udp_frame(dst_mac: bytes, src_ip: bytes, dst_ip: bytes, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram from the vRouter to a guest, as a frame."""
    return ethernet(dst_mac, VROUTER_MAC, ETH_IP, ipv4(src_ip, dst_ip, UDP, udp4(src_ip, dst_ip, sport, dport, data)))


def icmp_echo_reply_frame(dst_mac: bytes, request: bytes, ihl: int) -> bytes:
    """The echo reply to an IPv4 echo request ``request`` (the IP packet), as a frame: addresses
    swapped, type 0, the request's identifier, sequence and data."""
    src, dst = request[12:16], request[16:20]
    total = struct.unpack_from("!H", request, 2)[0]
    icmp = bytearray(request[ihl:total])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", internet_checksum(bytes(icmp)))
    return ethernet(dst_mac, VROUTER_MAC, ETH_IP, ipv4(dst, src, ICMP, bytes(icmp)))


class Arp(NamedTuple):
    """An Ethernet/IPv4 ARP message."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(frame: bytes) -> Arp:
    """The ARP message in an Ethernet frame, or Malformed naming what is wrong."""
    if len(frame) < 14 + _ARP.size:
        raise Malformed("ARP shorter than 42 bytes")
    _dst, _src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_ARP:
        raise Malformed("not ARP")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP.unpack_from(frame, 14)
    if htype != 1 or ptype != ETH_IP or hlen != 6 or plen != 4:
        raise Malformed("ARP not for Ethernet and IPv4")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise Malformed("ARP operation %d" % op)
    return Arp(op, smac, sip, tmac, tip)


def arp_reply_frame(request: Arp, mac: bytes) -> bytes:
    """The reply to an ARP request: ``mac`` has the address asked for."""
    body = _ARP.pack(1, ETH_IP, 6, 4, ARP_REPLY, mac, request.target_ip, request.sender_mac, request.sender_ip)
    return ethernet(request.sender_mac, mac, ETH_ARP, body)
