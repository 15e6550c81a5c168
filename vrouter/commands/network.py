"""``vrouter network add|del|list``: a virtual network's IPAM, as the controller gives it to the
agent (what its DHCP, DNS, ARP and ICMP answers for the network's ports come from)."""

from __future__ import annotations

import argparse
from typing import Any

from vrouter.commands.output import UsageError, emit
from vrouter.commands.target import add_target_args, agent_call
from vrouter.messages.control import NetworkAdd, NetworkDel, NetworkList, NetworkRecord


def add_parsers(sub: Any) -> None:
    nw = sub.add_parser("network", help="configure virtual networks (their subnet, gateway, DHCP and DNS)",
                        description="Give the agent a virtual network's IPAM, as the controller would: what its DHCP, DNS, ARP "
                        "and ICMP answers for the network's ports come from. Defaults: the gateway is the subnet's first address "
                        "plus one, the service address (DHCP server, DNS) plus two.")  # fmt: skip
    nw.add_argument("oper", choices=["add", "del", "delete", "list"])
    nw.add_argument("--vn-uuid", "--vn_uuid", dest="vn_uuid", help="virtual network uuid (the ports' --vn-uuid)")
    nw.add_argument("--subnet", help="IPv4 subnet, e.g. 10.1.1.0/24")
    nw.add_argument("--name", help="network name")
    nw.add_argument("--gateway", help="default gateway (default: the subnet's first address + 1)")
    nw.add_argument("--dns-server", "--dns_server", dest="dns_server", help="service address: DHCP server and DNS (default: first + 2)")
    nw.add_argument("--no-dhcp", action="store_true", help="the agent answers no DHCP in this network")
    nw.add_argument("--mtu", help="interface MTU sent in DHCP (option 26) and router advertisements (default: none)")
    nw.add_argument("--domain", help="DNS domain of its instances and DHCP option 15 (default: [SERVICES] dns_domain)")
    nw.add_argument("--host-route", "--host_route", dest="host_route", action="append", metavar="PREFIX/LEN via NEXTHOP",
                    help="a route for DHCP's classless static routes (repeatable)")  # fmt: skip
    nw.add_argument("--subnet6", help="dual stack: the IPv6 subnet, e.g. fd00:10:1:1::/64")
    nw.add_argument("--gateway6", help="IPv6 default gateway (default: the subnet's first address + 1)")
    nw.add_argument("--dns-server6", "--dns_server6", dest="dns_server6", help="IPv6 service address: DNS (default: first + 2)")
    nw.add_argument("--ipv6-mode", "--ipv6_address_mode", dest="ipv6_mode", choices=["none", "slaac", "dhcpv6-stateful", "dhcpv6-stateless"],
                    help="how guests take their IPv6 address, as Neutron's ipv6_address_mode: none (static, from network_data.json), "
                    "slaac (router advertisements), dhcpv6-stateful (DHCPv6 gives the address), dhcpv6-stateless (SLAAC, and DHCPv6 "
                    "the DNS servers); default none")  # fmt: skip
    add_target_args(nw)
    nw.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.oper == "add":
        net = agent_call(args, NetworkAdd(args.vn_uuid, args.subnet, args.name, args.gateway, args.dns_server, not args.no_dhcp, args.mtu,
                                          args.domain, args.host_route or [], args.subnet6, args.gateway6, args.dns_server6,
                                          args.ipv6_mode))  # fmt: skip
        emit(net, args.json, "network %s (%s) set: %s, gateway %s, service address %s" % (net.name, net.uuid, net.subnet, net.gateway,
                                                                                           net.dns_server))  # fmt: skip
    elif args.oper in ("del", "delete"):
        if not args.vn_uuid:
            raise UsageError("network del needs --vn-uuid")
        net = agent_call(args, NetworkDel(args.vn_uuid))
        emit(net, args.json, "network %s (%s) removed" % (net.name, net.uuid))
    else:
        nets = agent_call(args, NetworkList())
        emit(nets, args.json, format_networks(nets))
    return 0


def format_networks(nets: list[NetworkRecord]) -> str:
    rows = ["%-20s %-36s %-18s %-15s %-15s %-5s %-5s %s" % ("name", "uuid", "subnet", "gateway", "service", "vrf", "dhcp", "ipv6")]
    for n in nets:
        dhcp = "on" if n.dhcp else "off"
        v6 = "%s %s" % (n.subnet6, n.ipv6_mode) if n.subnet6 else "-"
        rows.append("%-20s %-36s %-18s %-15s %-15s %-5d %-5s %s" % (n.name, n.uuid, n.subnet, n.gateway, n.dns_server, n.vrf, dhcp, v6))
    return "\n".join(rows)
