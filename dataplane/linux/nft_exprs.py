"""nf_tables netlink messages, built and read: attributes, the expressions a rule is made of, and
the constants of the kernel's nf_tables and netlink headers (``linux/netfilter/nf_tables.h``,
``linux/netlink.h``).  ``dataplane.linux.nftables`` builds its tables from them."""

from __future__ import annotations

import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFT_META_IIF = 4
NFT_REG_VERDICT = 0
NFT_JUMP = -3

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
ACK_BUFFER = 64 << 20  # a bound on the acks' memory, not an allocation

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000

NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_OUT = 3
PRIO_RAW = -300

NFT_META_MARK = 3
NFT_META_IIFNAME = 6
NF_ACCEPT = 1
NF_DROP = 0
NFT_META_L4PROTO = 16
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_REG_1 = 1
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
NFT_CMP_LTE = 3
NFT_CMP_GTE = 5


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    pad = (-length) % 4
    return struct.pack("=HH", length, kind) + payload + b"\0" * pad


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def nla_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def expr(name: str, *data: bytes) -> bytes:
    # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    return nest(1, nla_str(1, name), nest(2, *data))


def meta(key: int) -> bytes:
    return expr("meta", be32(1, NFT_REG_1), be32(2, key))


def load(offset: int, length: int, base: int = NFT_PAYLOAD_NETWORK_HEADER) -> bytes:
    return expr(
        "payload",
        be32(1, NFT_REG_1),
        be32(2, base),
        be32(3, offset),
        be32(4, length),
    )


def cmp(op: int, value: bytes) -> bytes:
    return expr("cmp", be32(1, NFT_REG_1), be32(2, op), nest(3, attr(1, value)))


def cmp_eq(value: bytes) -> bytes:
    return cmp(NFT_CMP_EQ, value)


def bitwise_mask(mask: bytes) -> bytes:
    zero = b"\0" * len(mask)
    return expr(
        "bitwise",
        be32(1, NFT_REG_1),
        be32(2, NFT_REG_1),
        be32(3, len(mask)),
        nest(4, attr(1, mask)),
        nest(5, attr(1, zero)),
    )


def counter() -> bytes:
    return expr("counter")


def notrack() -> bytes:
    return expr("notrack")


def nfqueue(queue: int, total: int) -> bytes:
    # struct xt_NFQ_info_v3 { __u16 queuenum; __u16 queues_total; __u16 flags; }
    flags = 0  # no NFQ_FLAG_BYPASS (fail closed); several queues are balanced by flow hash
    info = struct.pack("=HHH", queue, total, flags) + b"\0\0"
    return expr("target", nla_str(1, "NFQUEUE"), be32(2, 3), attr(3, info))


def jump(chain: str) -> bytes:
    # immediate { dreg verdict, data { verdict { code NFT_JUMP, chain } } }
    return expr("immediate", be32(1, NFT_REG_VERDICT), nest(2, nest(2, be32(1, NFT_JUMP), nla_str(2, chain))))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """A netlink message's attributes (the top level), by type."""
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out
