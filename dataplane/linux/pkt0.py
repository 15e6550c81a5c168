"""pkt0: the frames between the agent's services and the guests' taps.

On a vRouter node, pkt0 carries what the datapath traps to the agent and what
the agent sends back.  Here one AF_PACKET socket in the compute namespace
reads, from every interface, only what the services want as frames (ARP, and
IPv6 neighbour discovery: a kernel BPF filter keeps the rest out), and sends
the services' answers out of a named tap.  IP packets for the services (DHCP,
DNS, ICMP) reach them through NFQUEUE and the dataplane's traps instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("vrouter.dataplane")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
MAX_PER_WAKE = 256  # frames read per wake-up, so that a flood of ARP does not hold the loop

# classic BPF: accept ARP (ethertype 0x0806) and neighbour discovery, ICMPv6 types 133-137
# (ethertype 0x86dd, next header 58 at byte 20, ICMPv6 type at byte 54), drop everything else
_FILTER = [
    (0x28, 0, 0, 12),  # ldh [12]
    (0x15, 6, 0, 0x0806),  # jeq ARP -> accept
    (0x15, 0, 6, 0x86DD),  # jeq IPv6, else drop
    (0x30, 0, 0, 20),  # ldb [20]
    (0x15, 0, 4, 58),  # jeq ICMPv6, else drop
    (0x30, 0, 0, 54),  # ldb [54]
    (0x35, 0, 2, 133),  # jge router solicitation, else drop
    (0x25, 1, 0, 137),  # jgt redirect -> drop, else accept
    (0x06, 0, 0, 0xFFFF),  # accept
    (0x06, 0, 0, 0),  # drop
]

FrameHandler = Callable[[str, bytes], None]  # (the interface it came in on, the frame)


def _ignore(ifname: str, frame: bytes) -> None:
    pass


class Pkt0:
    def __init__(self) -> None:
        self.on_frame: FrameHandler = _ignore  # the agent's services
        self.sock: socket.socket | None = None
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prog: ctypes.Array[ctypes.c_char] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        code = b"".join(struct.pack("HBBI", *ins) for ins in _FILTER)
        self._prog = ctypes.create_string_buffer(code)
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(_FILTER), ctypes.addressof(self._prog)))
        s.setblocking(False)
        while True:  # what arrived before the filter was attached
            try:
                s.recv(65536)
            except BlockingIOError:
                break
        self.sock = s
        self._loop = loop
        loop.add_reader(s.fileno(), self._drain)

    def _drain(self) -> None:
        assert self.sock is not None
        for _ in range(MAX_PER_WAKE):
            try:
                frame, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.errors += 1
                log.error("pkt0: %s", e)
                return
            if addr[2] == PACKET_OUTGOING:
                continue  # our own answers, and the kernel's
            try:
                self.on_frame(addr[0], frame)
            except Exception:  # a bug must not stop the services: drop the frame and say so once
                self.errors += 1
                if self.errors == 1 or self.errors % 10000 == 0:
                    log.exception("pkt0: error on a frame from %s (%d so far); dropped", addr[0], self.errors)

    def send(self, ifname: str, frame: bytes) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto(frame, (ifname, 0))
            return True
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 10000 == 0:
                log.warning("pkt0: cannot send to %s: %s (%d so far)", ifname, e, self.errors)
            return False

    def stop(self) -> None:
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
