"""The on-"disk" layout of the flow table: one 128-byte record per entry, as in the vRouter.

A shared-memory file holds a 4096-byte header and then the records.  The
dataplane writes it; ``vrouter flow -l`` maps it read-only.  Everything a
reader needs to interpret the file is in this module.  In the ``ebpf``
datapath the same bytes are the values of a BPF array map (the header its
first 32 values) and the file holds only the map's id (``MAP_POINTER``).

Record (little-endian, 128 bytes)::

    off size field
      0   4  key: nexthop id (K(nh)), the source interface's nexthop
      4  16  key: source address (IPv4 in the first 4 bytes, rest zero)
     20  16  key: destination address
     36   2  key: source port (ICMP: echo id)
     38   2  key: destination port
     40   1  key: IP protocol
     41   1  key: address family (4 or 6)
     42   2  (pad, part of the compared key)
     44   2  flags (Flag: the values of tf-vrouter's include/vr_flow.h)
     46   1  action (Action)
     47   1  drop reason (DropReason), for Drop
     48   4  reverse flow index
     52   1  generation id, bumped whenever the slot is reused
     53   1  TCP flags seen
     54   2  VRF
     56   2  destination VRF
     58   2  NAT source port (SPort)
     60   4  source nexthop (S(nh))
     64   8  packets
     72   8  bytes
     80   8  setup time, ns since the epoch
     88   8  last used, ns since the epoch
     96   4  overflow chain, index + 1 (0: none): in the first entry of a bucket
             that a writer owns, the head of that writer's overflow chain of the
             bucket (one writer: the bucket's first entry); in an overflow entry
             the next link; it belongs to the slot, not to the flow in it
    100   2  source vif
    102   2  flags1 (Flag1: this project's; vr_flow.h's fe_flags1 holds only HBS bits)
    104  24  reserved
"""

from __future__ import annotations

import enum
import struct

RECORD_SIZE = 128
BUCKET_SIZE = 4
HEADER_SIZE = 4096
MAGIC = b"VRFLOWT1"
VERSION = 2  # 2: flag values as in vr_flow.h, the reverse bit in flags1

KEY_LEN = 44
KEY = struct.Struct("<I16s16sHHBBxx")
assert KEY.size == KEY_LEN

OFF_FLAGS = 44
OFF_ACTION = 46
OFF_DROP = 47
OFF_RINDEX = 48
OFF_GEN = 52
OFF_TCPFLAGS = 53
OFF_VRF = 54
OFF_DVRF = 56
OFF_NAT_SPORT = 58
OFF_SRC_NH = 60
OFF_PACKETS = 64
OFF_BYTES = 72
OFF_SETUP = 80
OFF_LAST = 88
OFF_OFLOW_NEXT = 96
OFF_VIF = 100
OFF_FLAGS1 = 102

# Everything after the key up to the overflow link, written at once when a flow is set up.
BODY = struct.Struct("<HBBIBBHHHIQQQQ")
assert KEY_LEN + BODY.size == OFF_OFLOW_NEXT

# Counters updated per packet: packets, bytes at 64, setup time (rewritten unchanged), last used at 88.
COUNTERS = struct.Struct("<QQQQ")
assert OFF_PACKETS + COUNTERS.size == OFF_OFLOW_NEXT and OFF_LAST == OFF_PACKETS + 24
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
U16 = struct.Struct("<H")

# File header: magic, version, record size, bucket size, main entries, overflow entries, owner pid.
HEADER = struct.Struct("<8sIIIIII")
# ... and at OFF_WRITERS, how many writers (dataplane workers) share the table: entry i is
# written only by writer i % writers (0 in a file written before there were workers: one).
OFF_WRITERS = 32
MAX_WRITERS = BUCKET_SIZE  # each writer owns at least one entry of every bucket
# ... and at OFF_CLOCK (ebpf datapath), CLOCK_REALTIME minus CLOCK_MONOTONIC in ns, signed: the
# kernel program stamps last used as its monotonic clock plus this, so ns since the epoch as here.
OFF_CLOCK = 40
# The ebpf datapath keeps the table in a BPF array map whose values are the records; the header is
# its first HEADER_RECORDS values, so that entry i is value HEADER_RECORDS + i.
HEADER_RECORDS = HEADER_SIZE // RECORD_SIZE
# Where nfqueue mode keeps the table's file, ebpf mode keeps a pointer to the map: this, then its id.
MAP_POINTER = b"VRBPFMAP "


class Action(enum.IntEnum):
    DROP = 0
    HOLD = 1
    FORWARD = 2
    NAT = 3


ACTION_LETTER = {Action.DROP: "D", Action.HOLD: "H", Action.FORWARD: "F", Action.NAT: "N"}


class Flag(enum.IntFlag):
    """Entry flags, with tf-vrouter's values (include/vr_flow.h: VR_FLOW_FLAG_*, VR_RFLOW_VALID).

    The vRouter also defines MODIFIED (0x0100), EVICTED (0x0800), MIRROR (0x2000) and VRFT
    (0x4000); this dataplane never sets them (a closed pair is removed, not left evicted), so
    they are not listed."""

    ACTIVE = 0x0001
    SNAT = 0x0002  # the NAT kinds are action specific, as in vr_flow.h
    SPAT = 0x0004
    DNAT = 0x0008
    DPAT = 0x0010
    NEW_FLOW = 0x0200
    EVICT_CANDIDATE = 0x0400
    RFLOW_VALID = 0x1000
    LINK_LOCAL = 0x8000


class Flag1(enum.IntFlag):
    """This project's second flags word.  The vRouter's entry does not say which half of a pair
    it is (its agent knows); ours does, so that aging and the tools need no agent."""

    REVERSE = 0x0001  # this entry is the reverse half of its pair
    HELD = 0x0002  # ebpf: the engine may still hold packets of this flow: the program hands the rest up
    SLOW = 0x0004  # ebpf: every packet of this pair is the engine's (an IPv6 link-local service flow)


NAT_FLAGS = Flag.SNAT | Flag.SPAT | Flag.DNAT | Flag.DPAT

# The bits the table and the dataplane test per packet and per flow set-up, as plain ints:
# IntFlag arithmetic costs microseconds.
F_ACTIVE = int(Flag.ACTIVE)
F_RFLOW_VALID = int(Flag.RFLOW_VALID)
F_NEW_FLOW = int(Flag.NEW_FLOW)
F_EVICT_CANDIDATE = int(Flag.EVICT_CANDIDATE)
F1_REVERSE = int(Flag1.REVERSE)
F1_HELD = int(Flag1.HELD)
F1_SLOW = int(Flag1.SLOW)


class DropReason(enum.IntEnum):
    """Why a flow (or a packet) was dropped; names as ``dropstats`` prints them."""

    NONE = 0
    FLOW_TABLE_FULL = 1
    FLOW_UNUSABLE = 2
    FLOW_QUEUE_LIMIT = 3
    FLOW_ACTION_DROP = 4
    FLOW_NAT_NO_RFLOW = 5
    FLOW_EVICT = 6
    INVALID_PACKET = 7
    INVALID_SOURCE = 8
    NO_ROUTE = 9
    UNKNOWN_INTERFACE = 10
    INVALID_PROTOCOL = 11
    FLOW_LIMIT = 12
    LINK_LOCAL_LIMIT = 13
    INVALID_DHCP = 14
    INVALID_DNS = 15
    INVALID_ARP = 16
    FLOW_SETUP_RATE = 17
    INVALID_ND = 18  # a malformed neighbour discovery message (RFC 4861's validation)
    INVALID_DHCP6 = 19
    ND_RATE = 20  # neighbour solicitations past a VM's rate: not answered


DROP_NAMES = {
    DropReason.FLOW_TABLE_FULL: "Flow Table Full",
    DropReason.FLOW_UNUSABLE: "Flow Unusable",
    DropReason.FLOW_QUEUE_LIMIT: "Flow Queue Limit Exceeded",
    DropReason.FLOW_ACTION_DROP: "Flow Action Drop",
    DropReason.FLOW_NAT_NO_RFLOW: "Flow NAT no rflow",
    DropReason.FLOW_EVICT: "Flow Evict",
    DropReason.INVALID_PACKET: "Invalid Packet",
    DropReason.INVALID_SOURCE: "Invalid Source",
    DropReason.NO_ROUTE: "No L3 Route",
    DropReason.UNKNOWN_INTERFACE: "Unknown Interface",
    DropReason.INVALID_PROTOCOL: "Invalid Protocol",
    DropReason.FLOW_LIMIT: "Flow Limit",
    DropReason.LINK_LOCAL_LIMIT: "Link-local Limit",
    DropReason.INVALID_DHCP: "Invalid DHCP",
    DropReason.INVALID_DNS: "Invalid DNS",
    DropReason.INVALID_ARP: "Invalid ARP",
    DropReason.FLOW_SETUP_RATE: "Flow Setup Rate Limit",
    DropReason.INVALID_ND: "Invalid ND",
    DropReason.INVALID_DHCP6: "Invalid DHCPv6",
    DropReason.ND_RATE: "ND Rate Limit",
}

# The short form `flow -l` shows in D(...)
DROP_SHORT = {
    DropReason.FLOW_TABLE_FULL: "TableFull",
    DropReason.FLOW_ACTION_DROP: "Policy",
    DropReason.INVALID_SOURCE: "InvSrc",
    DropReason.NO_ROUTE: "NoRoute",
    DropReason.INVALID_PROTOCOL: "Proto",
    DropReason.FLOW_LIMIT: "FlowLim",
    DropReason.LINK_LOCAL_LIMIT: "LinkLocal",
}


def make_key(nh: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    """The 44 key bytes of a flow; src and dst are 4 (IPv4) or 16 (IPv6) bytes."""
    family = 4 if len(src) == 4 else 6
    return KEY.pack(nh, src, dst, sport, dport, proto, family)


def nat_letters(flags: int) -> str:
    """The bracketed kinds of an N action: S source, D destination, Ps/Pd ports, L link-local."""
    out = ""
    if flags & Flag.SNAT:
        out += "S"
    if flags & Flag.SPAT:
        out += "Ps"
    if flags & Flag.DNAT:
        out += "D"
    if flags & Flag.DPAT:
        out += "Pd"
    if flags & Flag.LINK_LOCAL:
        out += "L"
    return out
