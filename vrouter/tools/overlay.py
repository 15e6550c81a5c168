"""``vrouter rt --dump VRF``, ``nh --list``, ``nh --get ID`` and ``mpls --dump``: the overlay's routes,
next hops and incoming labels, printed like the vRouter's ``rt``, ``nh`` and ``mpls`` utilities.

The formats are those of tf-vrouter's utils/rt.c (route_req_process, vr_print_rtable_header,
dump_legend), utils/nh.c (nexthop_req_process, nh_flags) and utils/mpls.c (mpls_req_process and
main), at tungstenfabric/tf-vrouter 432a8e0cfe7a (2024-03-26): the same column widths, the same
wording, MACs as glibc's ether_ntoa writes them (no leading zeros: ``2:c2:23:4c:d0:55``), the
trailing ", " of nh's flags and the trailing space after each byte of its encap data.  Where
this emulator's records differ from the kernel's:

- rt: the real dump walks the VRF's mtrie and prints every bucket (``0.0.0.0/8  0  -  0  -`` and
  the like), its PPL being the prefix length of the route that covers the bucket; here only the
  routes are printed, one row each, sorted by address, and PPL is the route's own prefix length
  (what the real one prints for a host route).  The stitched MAC's index is the MAC's entry in
  the VRF's bridge table, which this emulator does not have: it is printed as 0.  A route's
  label is printed when its flags have L, as rt does (``-`` otherwise).  ``format_rt`` prints
  one family, as rt does (``--family inet``, the default, or ``inet6``).
- nh: Rid is always 0 (one vRouter); Ref_cnt counts the routes and labels that use the next hop
  (the kernel's also counts the agent's reference, flows and other next hops).  A tunnel's
  encap data (the fabric's Ethernet header, towards the gateway's MAC) is the kernel's here, not
  the vRouter's: it prints as ``Len:0 Data:``.  An Encap next hop's family is 0806, as the agent
  gives an interface's next hop; its data is the VM's MAC, the vRouter's MAC, 08 00.  Flags are
  printed in the order of their bits (vr_nexthop.h), a flag the kernel does not have at the end.
  Only the types this emulator has are spelt out (Encap, Tunnel, Receive, Drop); any other
  prints its first two lines.
- mpls: as the real one.
"""

from __future__ import annotations

import ipaddress

from dataplane.core.frames import mac_bytes
from vrouter.messages.control import MplsRecord, NhRecord, RouteRecord, RouteTable
from vrouter.tools.vif import VROUTER_MAC

# rt.c inet_flags: the legend of rt --dump's inet and inet6 tables
RT_LEGEND = "Flags: L=Label Valid, P=Proxy ARP, T=Trap ARP, F=Flood ARP, Ml=MAC-IP learnt route"
RT_COLUMNS = "Destination           PPL        Flags        Label         Nexthop    Stitched MAC(Index)"

# nh.c nh_flags, in the order of the flags' bits (vr_nexthop.h)
NH_FLAG_ORDER = [
    "Valid", "Policy", "MPLSoGRE", "Udp", "Multicast", "MPLSoUDP", "Vxlan", "Policy(R)", "Fabric", "Ecmp", "Evpn", "Encap", "Tor",
    "RouteLookup", "Unicast Flood", "Copy SIP", "Flow Lookup", "Pbb", "Mac Learn", "Etree Root", "Indirect", "Evpn Control Word",
    "Encrypt Traffic", "l3_vxlan", "Underlay Ecmp",
]  # fmt: skip
NH_INDENT = " " * 14  # nh_print_newline_header
ETH_P_ARP = 0x0806  # the encap family the agent gives an interface's next hop
ETH_P_IP = b"\x08\x00"


def ether_ntoa(mac: str) -> str:
    """``mac`` as glibc's ether_ntoa writes it: hex bytes without leading zeros."""
    return ":".join("%x" % b for b in mac_bytes(mac))


def format_rt(table: RouteTable, family: str = "inet") -> str:
    """``rt --dump VRF [--family inet|inet6]``: the legend, the table's name, its columns, a row per route."""
    version = {"inet": 4, "inet6": 6}[family]
    out = [RT_LEGEND, "vRouter inet%d routing table %d/%d/unicast" % (version, 0, table.vrf), RT_COLUMNS]
    routes = [r for r in table.routes if ipaddress.ip_address(r.prefix).version == version]
    routes.sort(key=lambda r: (int(ipaddress.ip_address(r.prefix)), r.prefix_len))
    out += [_route_row(r) for r in routes]
    return "\n".join(out) + "\n"


def _route_row(r: RouteRecord) -> str:
    label = "%5d" % r.label if "L" in r.flags else "%5c" % "-"
    mac = "%s(%d)" % (ether_ntoa(r.mac), 0) if r.mac else "-"
    dest = "%s/%-2d" % (r.prefix, r.prefix_len)
    return "%-21s%4d%s%5s%s%s%s%7d%s%s" % (dest, r.prefix_len, " " * 8, r.flags, " " * 6, label, " " * 8, r.nh, " " * 8, mac)


def format_nh_list(nhs: list[NhRecord]) -> str:
    """``nh --list``: a block per next hop, by id, each followed by a blank line."""
    return "".join(format_nh(nh) for nh in sorted(nhs, key=lambda nh: nh.id))


def format_nh(nh: NhRecord) -> str:
    """``nh --get ID``: the next hop's block, followed by a blank line."""
    six = ":" in nh.sip or ":" in nh.dip
    lines = [
        "Id:%-9d  Type:%-13s  Fmly:%8s  Rid:%d  Ref_cnt:%-10d Vrf:%d" % (nh.id, nh.type, "AF_INET6" if six else "AF_INET", 0, nh.ref_count, nh.vrf),
        "Flags:%s" % _nh_flags(nh.flags),
    ]
    if nh.type == "Receive":
        lines.append("Oif:%d" % nh.oif)
    elif nh.type == "Encap":
        encap = mac_bytes(nh.mac) + mac_bytes(VROUTER_MAC) + ETH_P_IP if nh.mac else b""
        lines.append("EncapFmly:%04x Oif:%d Len:%d" % (ETH_P_ARP, nh.oif, len(encap)))
        lines.append("Encap Data: " + "".join("%02x " % b for b in encap))
    elif nh.type == "Tunnel":
        lines.append("Oif:%d Len:%d Data:" % (nh.oif, 0))
        lines.append(("Sip: %s Dip: %s" if six else "Sip:%s Dip:%s") % (nh.sip, nh.dip))
    return ("\n" + NH_INDENT).join(lines) + "\n\n"


def _nh_flags(flags: list[str]) -> str:
    if not flags:
        return "None"
    rank = {name: i for i, name in enumerate(NH_FLAG_ORDER)}
    ordered = sorted(flags, key=lambda f: rank.get(f, len(rank)))  # stable: unknown flags keep their order, last
    return "".join(f + ", " for f in ordered)


def format_mpls(labels: list[MplsRecord]) -> str:
    """``mpls --dump``: the incoming label map, by label."""
    out = ["MPLS Input Label Map", "", "   Label    NextHop", "-" * 19]
    out += ["%8d    %6d" % (m.label, m.nh) for m in sorted(labels, key=lambda m: m.label)]
    return "\n".join(out) + "\n"
