"""Flow lifecycle and limits in the dataplane: TCP eviction, aging, per-VM and link-local caps,
link-local NAT to the fabric with reserved ports."""

import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP

from dataplane.core.dataplane import Limits
from dataplane.core.services import LinkLocalService
from dataplane.core.vif import Vif
from flows.layout import Action, DropReason, Flag, make_key
from tests.dataplanes import METADATA, TAP1, TAP2, VHOST, dataplane

NTP = LinkLocalService("ntp", "169.254.169.123", 123, ("10.10.0.1",), 123)
WEB = LinkLocalService("web", "169.254.10.10", 8080, ("10.10.0.7", "10.10.0.8"), 80)
API = LinkLocalService("api", "169.254.10.20", 8000, ("10.10.0.1",), 8000)  # one fabric address: its answers are known


class Ports:
    """A port allocator that hands out ports in order and records releases."""

    def __init__(self, limit: int = 1000):
        self.next = 50000
        self.limit = limit
        self.live: set[int] = set()

    def reserve(self, proto, v6=False):
        if len(self.live) >= self.limit:
            raise OSError("no port")
        self.next += 1
        self.live.add(self.next)
        return self.next, self.next

    def release(self, handle):
        self.live.remove(handle)


def make(limits=None, ports=None, entries=4096):
    return dataplane(entries, limits, ports, services=(METADATA, NTP, WEB, API))


def seg(src, dst, sport, dport, flags):
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def a_to_b(flags, sport=5000):
    return seg("10.1.1.3", "10.1.1.4", sport, 22, flags), TAP1


def b_to_a(flags, sport=5000):
    return seg("10.1.1.4", "10.1.1.3", 22, sport, flags), TAP2


def run(d, *pkts):
    return [d.process(p, dev) for p, dev in pkts]


def test_rst_evicts_the_pair_after_passing():
    d = make()
    run(d, a_to_b("S"), b_to_a("SA"))
    assert d.table.active == 2
    v = run(d, a_to_b("R"))[0]
    assert v.accept
    assert d.table.active == 0 and not any(d.entries.states)


def test_fin_both_ways_marks_the_pair_and_it_goes_a_second_later():
    d = make()
    run(d, a_to_b("S"), b_to_a("SA"), a_to_b("A"), a_to_b("FA"))
    assert d.table.active == 2
    run(d, b_to_a("FA"))
    flags = [e.flags for e in d.table.dump()]
    assert all(f & Flag.EVICT_CANDIDATE for f in flags)
    # the last ACKs, which may cross, still pass through the pair
    assert all(v.accept for v in run(d, a_to_b("A"), b_to_a("A")))
    assert d.table.active == 2
    since = d.lifecycle.closing()[d.table.dump()[0].index]
    assert d.evict_closed(since + 500_000_000) == 0
    assert d.evict_closed(since + 1_500_000_000) == 2
    assert d.table.active == 0 and not d.lifecycle.closing()


def test_port_reused_during_the_grace_starts_afresh():
    d = make()
    run(d, a_to_b("S"), b_to_a("SA"), a_to_b("FA"), b_to_a("FA"))
    since = next(iter(d.lifecycle.closing().values()))
    assert run(d, a_to_b("S"))[0].accept  # the same port again, at once
    assert not d.lifecycle.closing()
    assert d.evict_closed(since + 5_000_000_000) == 0
    assert d.table.active == 2 and not any(e.flags & Flag.EVICT_CANDIDATE for e in d.table.dump())


def test_half_close_keeps_the_pair():
    d = make()
    run(d, a_to_b("S"), b_to_a("SA"), a_to_b("FA"), b_to_a("A"), b_to_a("PA"))
    assert d.table.active == 2


def test_metadata_pair_evicted_on_close_from_the_proxy_side():
    d = make()
    run(d, (seg("10.1.1.3", "169.254.169.254", 40000, 80, "S"), TAP1))
    d.process(seg("10.10.0.2", "169.254.0.3", 8097, 40000, "SA"), 0)
    d.process(seg("10.10.0.2", "169.254.0.3", 8097, 40000, "FA"), 0)
    d.process(seg("10.1.1.3", "169.254.169.254", 40000, 80, "FA"), TAP1)
    d.process(seg("10.10.0.2", "169.254.0.3", 8097, 40000, "A"), 0)
    assert d.evict_closed(d.table.dump()[0].last_ns + 2_000_000_000) == 2
    assert d.table.active == 0


def test_per_vm_flow_limit_with_hysteresis():
    d = make(Limits(max_vm_flows=40))

    def udp(sport):
        return d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=sport, dport=9)), TAP1)

    def pair(sport):
        return d.table.lookup(make_key(3, socket.inet_aton("10.1.1.3"), socket.inet_aton("10.1.1.4"), 17, sport, 9))

    for port in range(1, 21):  # 20 pairs = 40 entries
        assert udp(port).accept
    v = udp(99)
    assert not v.accept and v.reason == DropReason.FLOW_LIMIT
    assert d.drops[DropReason.FLOW_LIMIT] == 1
    assert d.vifs[4].flows == 40  # the other VM holds those pairs too
    # one pair gone: 38 entries would leave room, but use has not fallen to 90% (36) yet
    d.entries.delete([pair(1)])
    assert d.vifs[3].flows == 38
    assert udp(98).reason == DropReason.FLOW_LIMIT
    assert udp(2).accept  # established flows still pass
    d.entries.delete([pair(2)])  # 36 entries: 90%
    assert udp(97).accept and udp(96).accept  # back to 40
    assert udp(95).reason == DropReason.FLOW_LIMIT


def api(src, sport, flags="S"):
    """A VM's segment to API, a link-local service on one fabric address."""
    return seg(src, "169.254.10.20", sport, 8000, flags)


def test_linklocal_limits_per_vm_and_per_host():
    d = make(Limits(max_vm_linklocal_flows=2, max_system_linklocal_flows=3), Ports())
    assert d.process(api("10.1.1.3", 40000), TAP1).accept and d.process(api("10.1.1.3", 40001), TAP1).accept
    assert d.process(api("10.1.1.3", 40002), TAP1).reason == DropReason.LINK_LOCAL_LIMIT
    assert d.process(api("10.1.1.4", 40000), TAP2).accept
    assert d.process(api("10.1.1.4", 40001), TAP2).reason == DropReason.LINK_LOCAL_LIMIT  # the host's cap of 3
    # metadata pairs are not capped: the vRouter's agent caps only the pairs it binds a port for
    assert all(d.process(seg("10.1.1.3", "169.254.169.254", 41000 + i, 80, "S"), TAP1).accept for i in range(10))
    assert d.entries.linklocal_flows == 3 and d.vifs[3].linklocal_flows == 2 and d.vifs[3].flows == 24
    d.flush()
    assert d.entries.linklocal_flows == 0 and d.vifs[3].linklocal_flows == 0
    assert d.process(api("10.1.1.3", 40002), TAP1).accept


def test_near_the_nodes_link_local_cap_no_vm_takes_more_than_a_quarter():
    # the vRouter's defaults let one VM hold the node's whole cap (2048 and 2048); here a VM that
    # floods takes three quarters of it at most, and the others still get theirs
    d = make(Limits(max_vm_linklocal_flows=64, max_system_linklocal_flows=64), Ports())
    took = sum(d.process(api("10.1.1.3", 40000 + i), TAP1).accept for i in range(100))
    assert took == 48 and d.entries.linklocal_flows == 48
    assert all(d.process(api("10.1.1.4", 40000 + i), TAP2).accept for i in range(16))  # the rest is vm2's
    assert d.process(api("10.1.1.4", 41000), TAP2).reason == DropReason.LINK_LOCAL_LIMIT  # the node's cap


def test_a_vms_flow_setup_rate_is_capped_by_a_token_bucket():
    d = make(Limits(vm_setup_rate=10))
    t0 = 5_000_000_000

    def new_flow(port, now, tap=TAP1, src="10.1.1.3"):
        return d.process(seg(src, "10.1.1.4" if tap == TAP1 else "10.1.1.3", port, 9, "S"), tap, now)

    assert [new_flow(30000 + i, t0).accept for i in range(12)] == [True] * 10 + [False, False]  # a second's worth, then no more
    assert new_flow(30020, t0).reason == DropReason.FLOW_SETUP_RATE
    assert new_flow(31000, t0, TAP2, "10.1.1.4").accept  # another VM has its own bucket
    assert new_flow(30000, t0).accept  # a live flow is no set-up
    assert new_flow(30030, t0 + 100_000_000).accept and not new_flow(30031, t0 + 100_000_000).accept  # one a tenth of a second
    assert d.drops[DropReason.FLOW_SETUP_RATE] == 4


def test_closed_pairs_stop_counting_against_the_limits_at_once():
    # a VM making one short connection to a link-local service after another must not hit its cap
    # with connections that are already closed and only wait out the grace period
    d = make(Limits(max_vm_linklocal_flows=2, max_system_linklocal_flows=2), Ports())

    def connection(sport):
        syn = d.process(api("10.1.1.3", sport), TAP1)
        port = IP(syn.payload)[TCP].sport if syn.accept else 0
        fabric = [d.process(seg("10.10.0.1", "10.10.0.2", 8000, port, f), VHOST) for f in ("SA", "FA")]
        return [syn, *fabric, d.process(api("10.1.1.3", sport, "FA"), TAP1), d.process(api("10.1.1.3", sport, "A"), TAP1)]

    for sport in range(40000, 40010):
        assert all(v.accept for v in connection(sport)), sport
    assert d.table.active == 20 and len(d.lifecycle.closing()) == 20  # all still in the table, none counted
    assert d.vifs[3].linklocal_flows == 0 and d.entries.linklocal_flows == 0 and d.vifs[3].flows == 0
    # reusing a closed pair's port counts it again, and within the limits
    assert d.process(api("10.1.1.3", 40000), TAP1).accept
    assert d.process(api("10.1.1.3", 40001), TAP1).accept
    assert d.vifs[3].linklocal_flows == 2
    v = d.process(api("10.1.1.3", 40002), TAP1)
    assert v.reason == DropReason.LINK_LOCAL_LIMIT
    assert d.evict_closed(max(d.lifecycle.closing().values()) + 2_000_000_000) == 16
    assert d.vifs[3].linklocal_flows == 2 and d.entries.linklocal_flows == 2  # the two restarted ones
    d.flush()
    assert d.vifs[3].linklocal_flows == 0 and d.entries.linklocal_flows == 0 and d.vifs[3].flows == 0


def test_closed_metadata_pairs_stop_counting_against_the_vms_flow_limit_at_once():
    d = make(Limits(max_vm_flows=4))

    def connection(sport):
        vm = [d.process(seg("10.1.1.3", "169.254.169.254", sport, 80, f), TAP1) for f in ("S", "FA")]
        proxy = [d.process(seg("10.10.0.2", "169.254.0.3", 8097, sport, f), 0) for f in ("SA", "FA")]
        return vm + proxy + [d.process(seg("10.1.1.3", "169.254.169.254", sport, 80, "A"), TAP1)]

    for sport in range(40000, 40010):
        assert all(v.accept for v in connection(sport)), sport
    assert d.table.active == 20 and d.vifs[3].flows == 0 and d.entries.linklocal_flows == 0
    assert d.process(seg("10.1.1.3", "169.254.169.254", 40000, 80, "S"), TAP1).accept
    assert d.process(seg("10.1.1.3", "169.254.169.254", 40001, 80, "S"), TAP1).accept
    assert d.vifs[3].flows == 4
    assert d.process(seg("10.1.1.3", "169.254.169.254", 40002, 80, "S"), TAP1).reason == DropReason.FLOW_LIMIT


def test_fabric_nat_with_reserved_port_released_with_the_flow():
    ports = Ports()
    d = make(ports=ports)
    q = bytes(IP(src="10.1.1.3", dst="169.254.169.123") / UDP(sport=33596, dport=123) / b"ntp?")
    v = d.process(q, TAP1)
    out = IP(v.payload)
    assert (out.src, out.dst, out[UDP].dport) == ("10.10.0.2", "10.10.0.1", 123)
    port = out[UDP].sport
    assert port in ports.live
    fwd = next(e for e in d.table.dump() if not e.reverse)
    assert fwd.action == Action.NAT and fwd.nat_sport == port
    assert fwd.flags & Flag.SNAT and fwd.flags & Flag.SPAT and fwd.flags & Flag.DNAT and not fwd.flags & Flag.DPAT
    # the fabric's answer arrives on vhost0 and goes back as the link-local service
    ans = bytes(IP(src="10.10.0.1", dst="10.10.0.2") / UDP(sport=123, dport=port) / b"ntp!")
    back = IP(d.process(ans, VHOST).payload)
    assert (back.src, back.dst, back[UDP].sport, back[UDP].dport) == ("169.254.169.123", "10.1.1.3", 123, 33596)
    d.flush()
    assert ports.live == set()


def test_fabric_nat_picks_among_fabric_ips_and_changes_port():
    ports = Ports()
    d = make(ports=ports)
    seen = set()
    for sport in range(40000, 40040):
        v = d.process(seg("10.1.1.3", "169.254.10.10", sport, 8080, "S"), TAP1)
        out = IP(v.payload)
        assert out[TCP].dport == 80
        seen.add(out.dst)
    assert seen == {"10.10.0.7", "10.10.0.8"}
    fwd = next(e for e in d.table.dump() if not e.reverse)
    assert fwd.flags & Flag.DPAT


def test_fabric_nat_without_ports_or_address_is_dropped():
    d = make(ports=Ports(limit=0))
    v = d.process(bytes(IP(src="10.1.1.3", dst="169.254.169.123") / UDP(sport=1, dport=123)), TAP1)
    assert v.reason == DropReason.FLOW_UNUSABLE
    d = make(ports=Ports())
    d.set_services([LinkLocalService("dns-named", "169.254.1.1", 53, (), 53, "ntp.example")])
    v = d.process(bytes(IP(src="10.1.1.3", dst="169.254.1.1") / UDP(sport=1, dport=53)), TAP1)
    assert v.reason == DropReason.NO_ROUTE
    d.flush()
    d.set_resolved("ntp.example", ("10.10.0.9",))
    v = d.process(bytes(IP(src="10.1.1.3", dst="169.254.1.1") / UDP(sport=1, dport=53)), TAP1)
    assert IP(v.payload).dst == "10.10.0.9"


def test_other_protocols_to_link_local_are_dropped():
    d = make()
    v = d.process(bytes(IP(src="10.1.1.3", dst="169.254.169.254", proto=47) / b"gre!"), TAP1)
    assert v.reason == DropReason.INVALID_PROTOCOL


def test_replugged_tap_keeps_flows_and_counters():
    d = make()
    run(d, a_to_b("S"))
    d.add_vif(Vif(3, "tapaaaaaaaa-aa", 21, "10.1.1.3", "02:00:00:00:00:03", vrf=1))  # new ifindex
    assert d.table.active == 2 and d.vifs[3].rx_packets == 1 and d.vifs[3].flows == 2
    assert d.process(seg("10.1.1.3", "10.1.1.4", 5000, 22, "A"), 21).accept
    assert d.process(seg("10.1.1.3", "10.1.1.4", 5000, 22, "A"), TAP1).reason == DropReason.UNKNOWN_INTERFACE


@pytest.mark.parametrize("flags", ["S", "A", "FA", "R"])
def test_reverse_packet_without_forward_is_not_set_up_from_the_host(flags):
    d = make()
    v = d.process(seg("10.10.0.1", "10.10.0.2", 123, 50001, flags), VHOST)
    assert v.reason == DropReason.FLOW_NAT_NO_RFLOW


def test_incremental_aging_looks_at_a_bounded_share_per_step():
    d = make()
    for sport in range(1, 51):
        d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.4") / UDP(sport=sport, dport=9)), TAP1, now=0)
    d.process(bytes(IP(src="10.1.1.4", dst="10.1.1.3") / UDP(sport=9, dport=1)), TAP2, now=9_000_000_000)  # pair 1 answered late
    removed = [d.age_step(idle_s=5, budget=20, now=10_000_000_000) for _ in range(3)]
    # 20 pairs looked at per step, in the order of the walk: three steps for the 50 pairs, and the
    # pair in use stays
    assert all(r <= 40 for r in removed) and sum(removed[:2]) < 98 and sum(removed) == 98
    assert d.table.active == 2
    assert d.age_step(idle_s=5, budget=20, now=20_000_000_000) == 2  # the next cycle finds it idle too


def test_closed_pairs_go_oldest_first_in_bounded_steps():
    d = make()
    for k, sport in enumerate(range(6000, 6005)):  # five pairs closing 100 ms apart
        t = k * 100_000_000
        for pkt, dev in (a_to_b("S", sport), b_to_a("SA", sport), a_to_b("FA", sport), b_to_a("FA", sport)):
            d.process(pkt, dev, now=t)
    assert len(d.lifecycle.closing()) == 10
    late = 1_000_000_000 + 250_000_000  # the grace is over for the first three only
    assert d.evict_closed(late, limit=2) == 4  # two pairs, the oldest
    assert d.evict_closed(late, limit=2) == 2  # the third; the other two are not due
    assert len(d.lifecycle.closing()) == 4 and d.table.active == 4
    assert d.evict_closed(late + 1_000_000_000) == 4 and not d.lifecycle.closing() and d.table.active == 0
