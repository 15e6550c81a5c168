"""The dataplane's own nftables tables, spoken to the kernel over netlink.

The IPv4 table (``ip vrouter``) sends to NFQUEUE every packet that a VM
sends, every packet the compute node itself sends towards a per-VM metadata
IP (169.254.0.0/16, the return traffic of NATed metadata flows), and every
TCP or UDP packet arriving on vhost0 for the link-local NAT port range (the
fabric's return traffic of link-local services).  The IPv6 table (``ip6
vrouter``) does the same for IPv6 (dual stack): every packet a VM sends but
neighbour discovery and MLD, and the proxy's packets back to the per-port IPv6
metadata addresses.  Nothing else on the host is
touched: the tables are created at start and deleted, by name, at stop.

Queues per VM: each plugged VM has two queues of its own, so that a VM flooding
the dataplane fills only its own (the kernel drops what does not fit, counted
for that queue).  Its service queue takes what its tap sends to the node's
services (link-local addresses 169.254.0.0/16, the limited broadcast of DHCP,
the gateways and service addresses of the virtual networks) and what the node
sends back to its metadata IPs; its data queue takes the rest of what its tap
sends (to other VMs).  Two, because a VM can be made to send: a ping flood to
it has its kernel answer every echo, and those answers, its own packets, must
not queue before its metadata requests (the vRouter likewise traps the
service traffic to its agent apart from the datapath's forwarding).
Everything else (the fabric's replies, taps not plugged, a metadata IP of no
VM) goes to the node's queue.  With several dataplane workers a VM's data queue
is a group (``VmQueue.queues_total``) that xt_NFQUEUE balances by a hash of the
addresses, the same both ways, and each worker's share of the link-local NAT
ports goes to its own node queue (``QueueRules.nat_ranges``).  With many VMs the per-VM
rules sit in buckets (chains) chosen by the low bits of the interface index or
of the metadata IP, so that a packet meets a few dozen rules, not one a VM.
The tables are made anew, in one transaction, when the VMs change (no packet
ever finds them half made), by flushing their rules and adding the new ones, not
by deleting the table: a deleted table takes its base chains' hooks with it, and
the kernel then drops every packet waiting in every queue of the namespace
(``nf_queue_nf_hook_drop``), every VM's in flight.  A VM plugged is appended to
the tables in force (``append_vms``): each VM's rules sit in bucket chains of
their own (one for a few VMs), where its rule's place does not matter.

Why netlink and not the ``nft`` command: many kernels (this project's CI
machine among them) are built without ``CONFIG_NFT_QUEUE``, so nft's native
``queue`` statement fails.  They do have ``CONFIG_NFT_COMPAT`` and the
xtables ``NFQUEUE`` target, which is what ``iptables-nft`` uses, but the nft
command cannot create an xt expression from text.  So this module builds the
netlink batch itself (the same messages libnftnl would send).  The queue is
bound without the bypass flag: with no dataplane reading it, the kernel drops
the packets (fail closed).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dataplane.linux.nft_exprs import (
    ACK_BUFFER,
    NETLINK_CAP_ACK,
    NETLINK_NETFILTER,
    NF_ACCEPT,
    NF_DROP,
    NF_INET_LOCAL_OUT,
    NF_INET_PRE_ROUTING,
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    NFT_CMP_GTE,
    NFT_CMP_LTE,
    NFT_CMP_NEQ,
    NFT_META_IIF,
    NFT_META_IIFNAME,
    NFT_META_L4PROTO,
    NFT_META_MARK,
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELTABLE,
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWTABLE,
    NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_REG_VERDICT,
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    PRIO_RAW,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
    be32,
    bitwise_mask,
    cmp,
    cmp_eq,
    counter,
    expr,
    jump,
    load,
    meta,
    nest,
    nfqueue,
    nla_str,
    notrack,
    parse_attrs,
)
from infra import netlink

TABLE_NAME = "vrouter"


class NftError(OSError):
    """A netlink request to nf_tables failed; errno says why."""


@dataclass(frozen=True)
class VmQueue:
    """One VM's queues: for its packets to the node's services and back, and for the rest it sends."""

    ifindex: int  # its tap's (0: absent; its metadata IPs are still queued)
    queue: int  # what its tap sends to other VMs (the first of ``queues_total``, balanced by addresses)
    service_queue: int  # what its tap sends to the services, and the node's packets to its metadata IPs
    metadata_ip: bytes  # 4 bytes
    metadata_ip6: bytes  # 16 bytes
    queues_total: int = 1  # its data queues: one a dataplane worker


@dataclass(frozen=True)
class QueueRules:
    """What the table sends to NFQUEUE."""

    tap_prefix: str = "tap"
    metadata_net: tuple[bytes, bytes] = (socket.inet_aton("169.254.0.0"), socket.inet_aton("255.255.0.0"))
    queue_num: int = 0  # the node's queue
    queue_total: int = 1
    vhost_name: str = "vhost0"
    nat_ports: tuple[int, int] = (61000, 65535)  # the fabric's replies to link-local NAT flows
    # ... or, with several dataplane workers, each worker's share of them: (first, last, its node queue)
    nat_ranges: tuple[tuple[int, int, int], ...] = ()
    vms: tuple[VmQueue, ...] = ()
    service_ips: tuple[bytes, ...] = ()  # 4 bytes each: the networks' gateways and service addresses
    service_ips6: tuple[bytes, ...] = ()  # 16 bytes each: the dual-stack networks' IPv6 gateways and service addresses
    tunnel_queue: int = -1  # MPLS over UDP from other nodes (UDP to tunnel_port on vhost0); -1: none
    tunnel_port: int = 6635
    # The ebpf datapath (0: nfqueue): what its program passed up carries this mark and is accepted
    # before any queue rule; the node's TCP to the metadata IPs without SYN or RST, and its
    # SYN-ACKs, are left to the program on the tap (the reverse NAT), except to captured VMs.
    fast_mark: int = 0
    captured: tuple[VmQueue, ...] = ()


BASE_CHAINS = ("from_vms", "to_metadata_ips")
BUCKETED_CHAINS = ("from_vms", "from_vms_to_services", "to_metadata_ips")  # each with its VMs' rules in buckets


def buckets_for(n: int) -> int:
    """How many bucket chains for ``n`` VMs: one up to 16 (a packet meets at most 16 rules)."""
    return 1 if n <= 16 else 16 if n <= 512 else 64


def bucket_chains(n: int) -> set[str]:
    """The names of the bucket chains of a table made with ``n`` buckets."""
    return {"%s_%d" % (c, b) for c in BUCKETED_CHAINS for b in range(n)}


class NftSocket:
    """A minimal nf_tables netlink client: batches of table, chain and rule messages."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        # A batch is acknowledged message by message while it is sent, before we read a reply: a
        # table of a thousand VMs is thousands of acks.  Short ones (no copy of the request), and
        # room for them all (forced past rmem_max as root), or the kernel drops them (ENOBUFS).
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, ACK_BUFFER)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ACK_BUFFER)
        self.sock.bind((0, 0))
        self.seq = int.from_bytes(os.urandom(3), "big")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NftSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _msg(self, mtype: int, flags: int, family: int, payload: bytes, res_id: int = 0) -> tuple[int, bytes]:
        self.seq += 1
        body = struct.pack("!BBH", family, 0, res_id) + payload
        header = struct.pack("=IHHII", 16 + len(body), mtype, flags, self.seq, 0)
        return self.seq, header + body

    def _nft(self, cmd: int, flags: int, payload: bytes, family: int = NFPROTO_IPV4) -> tuple[int, bytes]:
        return self._msg((NFNL_SUBSYS_NFTABLES << 8) | cmd, NLM_F_REQUEST | NLM_F_ACK | flags, family, payload)

    def batch(self, messages: Iterable[tuple[int, int, bytes]], family: int = NFPROTO_IPV4) -> None:
        """Send (cmd, flags, payload) messages as one transaction; raise NftError on the first error."""
        self.batches([(family, messages)])

    def batches(self, families: Iterable[tuple[int, Iterable[tuple[int, int, bytes]]]]) -> None:
        """Send the messages of several families (each (family, messages)) as one transaction: all
        of them take effect, or (NftError) none."""
        parts = []
        _, begin = self._msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, b"", NFNL_SUBSYS_NFTABLES)
        parts.append(begin)
        waiting = set()
        for family, messages in families:
            for cmd, flags, payload in messages:
                seq, msg = self._nft(cmd, flags, payload, family)
                waiting.add(seq)
                parts.append(msg)
        _, end = self._msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, b"", NFNL_SUBSYS_NFTABLES)
        parts.append(end)
        data = b"".join(parts)
        if len(data) > 64 << 10:  # a transaction is one datagram: the send buffer must hold it whole
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + 4096)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(data) + 4096)
        self.sock.sendall(data)
        self._acks(waiting)

    def _replies(self) -> Iterator[tuple[int, int, int]]:
        """Netlink messages as they arrive: (type, sequence, error code; 0 unless NLMSG_ERROR)."""
        while True:
            for mtype, seq, body in netlink.messages(self.sock.recv(65536)):
                yield mtype, seq, netlink.error_code(body) if mtype == NLMSG_ERROR else 0

    def _acks(self, waiting: set[int]) -> None:
        for mtype, seq, code in self._replies():
            if mtype != NLMSG_ERROR:
                continue
            waiting.discard(seq)
            if code != 0:
                # The kernel aborts the whole batch on the first error; later acks may not come.
                raise NftError(-code, os.strerror(-code))
            if not waiting:
                return

    def table_exists(self, name: str = TABLE_NAME, family: int = NFPROTO_IPV4) -> bool:
        want, msg = self._nft(NFT_MSG_GETTABLE, 0, nla_str(1, name), family)
        self.sock.sendall(msg)
        for mtype, seq, code in self._replies():
            if seq != want or mtype != NLMSG_ERROR:
                continue  # the table itself (when there is one) comes before the ack
            if code == 0:
                return True
            if -code == errno.ENOENT:
                return False
            raise NftError(-code, os.strerror(-code))
        return False

    def delete_table(self, name: str = TABLE_NAME, family: int = NFPROTO_IPV4) -> bool:
        """Delete our table if present; True if it was there."""
        if not self.table_exists(name, family):
            return False
        self.batch([(NFT_MSG_DELTABLE, 0, nla_str(1, name))], family)
        return True

    def delete_tables(self, name: str = TABLE_NAME) -> None:
        """Delete our IPv4 and IPv6 tables, those that exist."""
        self.delete_table(name, NFPROTO_IPV4)
        self.delete_table(name, NFPROTO_IPV6)

    def create_queue_tables(self, rules: QueueRules, name: str = TABLE_NAME) -> None:
        """Both tables, IPv4 and IPv6, made anew in one transaction: both or (NftError) neither."""
        self.batches([(NFPROTO_IPV4, self._table_messages(rules, name)), (NFPROTO_IPV6, self._table6_messages(rules, name))])

    def create_queue_table6(self, rules: QueueRules, name: str = TABLE_NAME) -> None:
        """The IPv6 table alone (``_table6_messages``), in a transaction of its own."""
        self.batch(self._table6_messages(rules, name), NFPROTO_IPV6)

    def create_queue_table(self, rules: QueueRules, name: str = TABLE_NAME) -> None:
        """The IPv4 table alone (``_table_messages``), in a transaction of its own."""
        self.batch(self._table_messages(rules, name))

    def _table6_messages(self, rules: QueueRules, name: str = TABLE_NAME) -> list[Message]:
        """The IPv6 table, as the IPv4 one: what each VM's tap sends to the services (link-local
        and multicast destinations: the metadata service, DHCPv6, the router; the networks' IPv6
        gateways and service addresses) to its service queue, the rest to its data queue, the
        node's packets to its IPv6 metadata address (fd00:a9fe:a9fe::/64) to its service queue;
        else the node's queue.  Neighbour discovery and MLD (ICMPv6 130-137 and 143, after any
        extension headers) are not queued: the kernel ignores what is not its own, and the
        agent answers from the frames pkt0 reads."""
        node = nfqueue(rules.queue_num, rules.queue_total)
        net6 = socket.inet_pton(socket.AF_INET6, "fd00:a9fe:a9fe::")
        mask6 = b"\xff" * 8 + b"\0" * 8
        n = buckets_for(len(rules.vms))
        msgs = self._refreshing(name, NFPROTO_IPV6, n) + _fast_rules(name, rules, True)
        icmp6_type = (meta(NFT_META_L4PROTO), cmp_eq(b"\x3a"), load(0, 1, NFT_PAYLOAD_TRANSPORT_HEADER))
        nd_types = ((cmp(NFT_CMP_GTE, b"\x82"), cmp(NFT_CMP_LTE, b"\x89")), (cmp_eq(b"\x8f"),))
        # ... but from a tap only to link-local and multicast destinations: the node forwards
        # IPv6, and ND to a unicast address elsewhere would pass no flow, VRF or source check
        # (the agent has read the frame already: pkt0 comes before netfilter)
        tap = (meta(NFT_META_IIFNAME), cmp_eq(rules.tap_prefix.encode()))
        off_link = (load(24, 16), bitwise_mask(b"\xff\xc0" + b"\0" * 14), cmp(NFT_CMP_NEQ, b"\xfe\x80" + b"\0" * 14),
                    load(24, 16), bitwise_mask(b"\xff" + b"\0" * 15), cmp(NFT_CMP_NEQ, b"\xff" + b"\0" * 15))  # fmt: skip
        for types in nd_types:
            msgs.append(_drop_rule(name, "from_vms", *tap, *icmp6_type, *types, *off_link))
        for types in nd_types:
            msgs.append(_accept_rule(name, "from_vms", *icmp6_type, *types))
        iif = meta(NFT_META_IIF)
        svc_in, vms_in, vms_out = _vm_rules(rules.vms, True)
        svc = "from_vms_to_services"
        msgs.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, nla_str(1, name) + nla_str(3, svc)))
        msgs += _bucketed(name, svc, (iif,), 4, svc_in, n)
        daddr = load(24, 16)
        to_services: list[tuple[bytes, ...]] = [(daddr, bitwise_mask(b"\xff\xc0" + b"\0" * 14), cmp_eq(b"\xfe\x80" + b"\0" * 14)),  # fe80::/10
                       (daddr, bitwise_mask(b"\xff" + b"\0" * 15), cmp_eq(b"\xff" + b"\0" * 15))]  # ff00::/8  # fmt: skip
        to_services += [(daddr, cmp_eq(ip)) for ip in dict.fromkeys(rules.service_ips6)]
        for matches in to_services:
            msgs.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(name, "from_vms", *matches, jump(svc))))
        msgs += _bucketed(name, "from_vms", (iif,), 4, vms_in, n)
        msgs += _bucketed(name, "to_metadata_ips", (load(39, 1),), 1, vms_out, n)
        msgs.append(_queue_rule(name, "from_vms", node, meta(NFT_META_IIFNAME), cmp_eq(rules.tap_prefix.encode())))
        msgs += _nat_reply_rules(name, rules)  # the fabric's IPv6 replies to link-local services over IPv6
        msgs.append(_queue_rule(name, "to_metadata_ips", node, load(24, 16), bitwise_mask(mask6), cmp_eq(net6)))
        return msgs

    def _table_messages(self, rules: QueueRules, name: str = TABLE_NAME) -> list[Message]:
        """The IPv4 table's messages (its rules replacing those there): what each VM's tap sends
        to a service (a jump to ``from_vms_to_services``) to its service queue, the rest to its
        data queue, what the node sends to its metadata IP to its service queue; then, to the
        node's queue, the rest from the taps, TCP and UDP arriving on vhost0 for the link-local
        NAT port range, and the compute node's own packets to other per-port metadata IPs; to the
        tunnel queue, MPLS over UDP arriving on vhost0."""
        net, mask = rules.metadata_net
        node = nfqueue(rules.queue_num, rules.queue_total)
        lo, hi = rules.nat_ports
        n = buckets_for(len(rules.vms))
        msgs = self._refreshing(name, NFPROTO_IPV4, n) + _fast_rules(name, rules, False)
        iif = meta(NFT_META_IIF)
        svc_in, vms_in, vms_out = _vm_rules(rules.vms, False)
        svc = "from_vms_to_services"
        msgs.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, nla_str(1, name) + nla_str(3, svc)))
        msgs += _bucketed(name, svc, (iif,), 4, svc_in, n)  # no match (a tap not plugged): back, to the rules below
        daddr = load(16, 4)
        to_services = [(daddr, bitwise_mask(mask), cmp_eq(net)), (daddr, cmp_eq(b"\xff" * 4))]
        to_services += [(daddr, cmp_eq(ip)) for ip in dict.fromkeys(rules.service_ips)]
        for matches in to_services:
            msgs.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(name, "from_vms", *matches, jump(svc))))
        msgs += _bucketed(name, "from_vms", (iif,), 4, vms_in, n)
        msgs += _bucketed(name, "to_metadata_ips", (load(19, 1),), 1, vms_out, n)
        msgs.append(_queue_rule(name, "from_vms", node, meta(NFT_META_IIFNAME), cmp_eq(rules.tap_prefix.encode())))
        vhost = (meta(NFT_META_IIFNAME), cmp_eq(rules.vhost_name.encode() + b"\0"))
        if rules.tunnel_queue >= 0:
            msgs.append(
                _queue_rule(
                    name,
                    "from_vms",
                    nfqueue(rules.tunnel_queue, 1),
                    *vhost,
                    meta(NFT_META_L4PROTO),
                    cmp_eq(b"\x11"),
                    load(2, 2, NFT_PAYLOAD_TRANSPORT_HEADER),
                    cmp_eq(struct.pack("!H", rules.tunnel_port)),
                )  # fmt: skip
            )
        msgs += _nat_reply_rules(name, rules)
        msgs.append(_queue_rule(name, "to_metadata_ips", node, load(16, 4), bitwise_mask(mask), cmp_eq(net)))
        return msgs

    def append_vms(self, vms: Sequence[VmQueue], buckets: int, name: str = TABLE_NAME) -> None:
        """Add VMs' rules to the tables in force, made with ``buckets`` buckets (both families, one
        transaction), without touching the other VMs' rules or anything queued."""
        parts: list[tuple[int, list[Message]]] = []
        for family in (NFPROTO_IPV4, NFPROTO_IPV6):
            msgs: list[Message] = []
            for rule_list, chain in zip(_vm_rules(vms, family == NFPROTO_IPV6), ("from_vms_to_services", "from_vms", "to_metadata_ips"), strict=True):
                msgs += [_vm_rule(name, chain, buckets, rule) for rule in rule_list]
            parts.append((family, msgs))
        if any(msgs for _, msgs in parts):
            self.batches(parts)

    def chains(self, name: str = TABLE_NAME, family: int = NFPROTO_IPV4) -> set[str]:
        """The names of our table's chains (none when there is no table)."""
        want, msg = self._msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP, family, b"")
        self.sock.sendall(msg)
        found: set[str] = set()
        while True:
            for mtype, seq, body in netlink.messages(self.sock.recv(1 << 16)):
                if seq != want:
                    continue
                if mtype == NLMSG_DONE:
                    return found
                if mtype == NLMSG_ERROR:
                    code = netlink.error_code(body)
                    if code:
                        raise NftError(-code, os.strerror(-code))
                    return found
                attrs = parse_attrs(body[4:])  # after the nfgenmsg header
                if attrs.get(1, b"").rstrip(b"\0").decode() == name:
                    found.add(attrs.get(3, b"").rstrip(b"\0").decode())

    def _refreshing(self, name: str, family: int, buckets: int) -> list[Message]:
        """The start of a batch that makes our table anew: the table and its base chains (kept if
        there: their hooks stay, and what waits in the queues with them), every rule of it
        deleted, and the bucket chains a table of ``buckets`` buckets does not have, so that the
        rules that follow replace the old ones at once."""
        there = self.chains(name, family)
        msgs = _skeleton(name)
        if there:
            msgs.append((NFT_MSG_DELRULE, 0, nla_str(1, name)))  # every chain's rules (nft flush table)
            unused = there - set(BASE_CHAINS) - {"from_vms_to_services"} - bucket_chains(buckets)
            msgs += [(NFT_MSG_DELCHAIN, 0, nla_str(1, name) + nla_str(3, c)) for c in sorted(unused)]
        return msgs


Message = tuple[int, int, bytes]  # (command, flags, payload) of a batch
VmRule = tuple[int, tuple[bytes, ...], int, int]  # (the bucket selector's value, the matches, the first queue, how many balanced)


def _vm_rules(vms: Sequence[VmQueue], v6: bool) -> tuple[list[VmRule], list[VmRule], list[VmRule]]:
    """Each VM's rules: to its service queue from its tap (for ``from_vms_to_services``), to its
    data queues from its tap (``from_vms``), to its service queue from the node to its metadata IP
    (``to_metadata_ips``).  A VM with no tap yet (ifindex 0) has only the last."""
    iif = meta(NFT_META_IIF)
    svc_in: list[VmRule] = [(vm.ifindex, (iif, cmp_eq(struct.pack("=I", vm.ifindex))), vm.service_queue, 1) for vm in vms if vm.ifindex]
    vms_in: list[VmRule] = [(vm.ifindex, (iif, cmp_eq(struct.pack("=I", vm.ifindex))), vm.queue, vm.queues_total) for vm in vms if vm.ifindex]
    vms_out: list[VmRule]
    if v6:
        vms_out = [(vm.metadata_ip6[-1], (load(24, 16), cmp_eq(vm.metadata_ip6)), vm.service_queue, 1) for vm in vms]
    else:
        vms_out = [(vm.metadata_ip[-1], (load(16, 4), cmp_eq(vm.metadata_ip)), vm.service_queue, 1) for vm in vms]
    return svc_in, vms_in, vms_out


def _vm_rule(table: str, chain: str, n: int, rule: VmRule) -> Message:
    """One VM's rule, in its bucket of ``chain`` (of ``n``)."""
    sel, matches, q, total = rule
    return _queue_rule(table, "%s_%d" % (chain, sel & (n - 1)), nfqueue(q, total), *matches)


def _bucketed(table: str, chain: str, key: tuple[bytes, ...], width: int, vms: Sequence[VmRule], n: int) -> list[Message]:
    """Rules of ``chain`` sending each VM's packets (matched by its ``matches``) to its queue, in
    ``n`` bucket chains that ``key`` (loaded into the register, ``width`` bytes; host order for 4)
    masked to its low bits selects, one jump rule a bucket (one bucket: jumped to by every
    packet).  In chains of their own, a VM plugged later is appended to its bucket."""
    msgs: list[Message] = []
    for b in range(n):
        bucket = "%s_%d" % (chain, b)
        msgs.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, nla_str(1, table) + nla_str(3, bucket)))
        if n == 1:
            select: tuple[bytes, ...] = ()
        elif width == 4:
            select = (*key, bitwise_mask(struct.pack("=I", n - 1)), cmp_eq(struct.pack("=I", b)))
        else:
            select = (*key, bitwise_mask(bytes([n - 1])), cmp_eq(bytes([b])))
        msgs.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(table, chain, *select, jump(bucket))))
    msgs += [_vm_rule(table, chain, n, rule) for rule in vms]
    return msgs


def _fast_rules(table: str, rules: QueueRules, v6: bool) -> list[Message]:
    """The ebpf datapath's rules, first in each chain: what the program passed up (its mark) is
    accepted; the node's TCP to a metadata IP without SYN or RST, or a SYN-ACK, goes on to the
    program, but
    to a captured VM's metadata IP it is queued (the capture sees it)."""
    if not rules.fast_mark:
        return []
    mark = (meta(NFT_META_MARK), cmp_eq(struct.pack("=I", rules.fast_mark)))
    if v6:
        daddr, net = load(24, 16), (bitwise_mask(b"\xff" * 8 + b"\0" * 8), cmp_eq(socket.inet_pton(socket.AF_INET6, "fd00:a9fe:a9fe::")))
        captured = [(daddr, cmp_eq(vm.metadata_ip6), vm.service_queue) for vm in rules.captured]
    else:
        net_ip, mask = rules.metadata_net
        daddr, net = load(16, 4), (bitwise_mask(mask), cmp_eq(net_ip))
        captured = [(daddr, cmp_eq(vm.metadata_ip), vm.service_queue) for vm in rules.captured]
    tcp_flags = (meta(NFT_META_L4PROTO), cmp_eq(b"\x06"), load(13, 1, NFT_PAYLOAD_TRANSPORT_HEADER))
    msgs = [_accept_rule(table, "from_vms", *mark)]
    msgs += [_queue_rule(table, "to_metadata_ips", nfqueue(q, 1), load, match) for load, match, q in captured]
    # on to the program: no SYN or RST (FINs it tells the engine itself); or a SYN-ACK (the engine's
    # TCP lifecycle wants the rest: a restart, a reset)
    msgs.append(_accept_rule(table, "to_metadata_ips", daddr, *net, *tcp_flags, bitwise_mask(b"\x06"), cmp_eq(b"\0")))
    msgs.append(_accept_rule(table, "to_metadata_ips", daddr, *net, *tcp_flags, bitwise_mask(b"\x17"), cmp_eq(b"\x12")))
    return msgs


def _nat_reply_rules(table: str, rules: QueueRules) -> list[Message]:
    """TCP and UDP arriving on vhost0 for the link-local NAT port range (or each worker's share of
    it) to the node's queue (that worker's): the fabric's replies to link-local services."""
    vhost = (meta(NFT_META_IIFNAME), cmp_eq(rules.vhost_name.encode() + b"\0"))
    msgs = []
    for first, last, queue in rules.nat_ranges or ((*rules.nat_ports, rules.queue_num),):
        for proto in (6, 17):
            msgs.append(
                _queue_rule(
                    table,
                    "from_vms",
                    nfqueue(queue, rules.queue_total),
                    *vhost,
                    meta(NFT_META_L4PROTO),
                    cmp_eq(bytes([proto])),
                    load(2, 2, NFT_PAYLOAD_TRANSPORT_HEADER),
                    cmp(NFT_CMP_GTE, struct.pack("!H", first)),
                    cmp(NFT_CMP_LTE, struct.pack("!H", last)),
                )  # fmt: skip
            )
    return msgs


def _drop_rule(table: str, chain: str, *matches: bytes) -> Message:
    """A rule: when all ``matches`` hold, count, do not track, and drop."""
    verdict = expr("immediate", be32(1, NFT_REG_VERDICT), nest(2, nest(2, be32(1, NF_DROP))))
    return (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(table, chain, *matches, counter(), notrack(), verdict))


def _accept_rule(table: str, chain: str, *matches: bytes) -> Message:
    """A rule: when all ``matches`` hold, count, do not track, and accept."""
    verdict = expr("immediate", be32(1, NFT_REG_VERDICT), nest(2, nest(2, be32(1, NF_ACCEPT))))
    return (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(table, chain, *matches, counter(), notrack(), verdict))


def _skeleton(table: str) -> list[tuple[int, int, bytes]]:
    """Our table with its two chains, both at raw priority (before conntrack)."""
    return [
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, nla_str(1, table)),
        (NFT_MSG_NEWCHAIN, NLM_F_CREATE, _chain(table, "from_vms", NF_INET_PRE_ROUTING)),
        (NFT_MSG_NEWCHAIN, NLM_F_CREATE, _chain(table, "to_metadata_ips", NF_INET_LOCAL_OUT)),
    ]


def _queue_rule(table: str, chain: str, queue: bytes, *matches: bytes) -> tuple[int, int, bytes]:
    """A rule: when all ``matches`` hold, count, do not track, and send to NFQUEUE."""
    return (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(table, chain, *matches, counter(), notrack(), queue))


def _chain(table: str, chain: str, hook: int) -> bytes:
    return b"".join(
        [
            nla_str(1, table),
            nla_str(3, chain),
            nest(4, be32(1, hook), be32(2, PRIO_RAW)),
            be32(5, 1),  # policy accept: what is not queued is not ours
            nla_str(7, "filter"),
        ]
    )


def _rule(table: str, chain: str, *exprs: bytes) -> bytes:
    return b"".join([nla_str(1, table), nla_str(2, chain), nest(4, *exprs)])
