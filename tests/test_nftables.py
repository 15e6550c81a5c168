"""The dataplane's nftables tables, made in a namespace of the test's own and read back with nft
(needs root): two queues per VM (what it sends to the services, the rest), in buckets when the VMs
are many, made anew in one transaction without deleting the table, VMs appended."""

import re
import socket
import subprocess

import pytest

from dataplane.linux.nftables import NftSocket, QueueRules, VmQueue, buckets_for
from tests.helpers import unique_prefix
from topology import netns

pytestmark = pytest.mark.netns


def vms(n: int) -> tuple[VmQueue, ...]:
    return tuple(
        VmQueue(100 + i, 2 * (3 + i), 2 * (3 + i) + 1, socket.inet_aton("169.254.%d.%d" % ((3 + i) >> 8, (3 + i) & 0xFF)),
                socket.inet_pton(socket.AF_INET6, "fd00:a9fe:a9fe::%x" % (3 + i)))
        for i in range(n)
    )  # fmt: skip


@pytest.fixture
def ns():
    name = unique_prefix() + "-nft"
    netns.create(name)
    try:
        with netns.Namespace(name) as n:
            yield n
    finally:
        netns.delete(name)


def ruleset(ns) -> str:  # noqa: ANN001
    return subprocess.run(["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"], capture_output=True, text=True).stdout


def apply(ns, rules: QueueRules) -> None:  # noqa: ANN001
    def make() -> None:
        with NftSocket() as nft:
            nft.create_queue_table(rules)
            nft.create_queue_table6(rules)

    ns.run(make)


def chain(text: str, name: str, family: str = "ip") -> str:
    table = text.split("table %s vrouter" % family)[1]
    return table.split("chain %s {" % name)[1].split("}")[0]


def test_a_few_vms_get_a_rule_each_before_the_nodes_catch_alls(ns):
    gateway, service = socket.inet_aton("10.1.1.1"), socket.inet_aton("10.1.1.2")
    apply(ns, QueueRules(vms=vms(3), service_ips=(gateway, service, gateway)))
    text = ruleset(ns)
    from_vms = chain(text, "from_vms")
    assert chain(text, "from_vms_0").count("iif ") == 3  # one bucket, every packet jumps to it
    assert from_vms.index('iifname "tap*"') > from_vms.rindex("jump from_vms_0")  # the VMs' own rules come first
    # what goes to a service jumps to the VMs' service queues first, once an address
    jumps = [line.strip() for line in from_vms.splitlines() if "jump from_vms_to_services" in line]
    assert jumps == [
        "ip daddr 169.254.0.0/16 jump from_vms_to_services",
        "ip daddr 255.255.255.255 jump from_vms_to_services",
        "ip daddr 10.1.1.1 jump from_vms_to_services",
        "ip daddr 10.1.1.2 jump from_vms_to_services",
    ]
    assert from_vms.index("jump from_vms_to_services") < from_vms.index("jump from_vms_0")
    assert chain(text, "from_vms_to_services_0").count("iif ") == 3
    assert len(re.findall(r"ip daddr 169\.254\.0\.\d+ ", text)) == 3 and "ip daddr 169.254.0.0/16" in text
    assert text.count("ip6 daddr fd00:a9fe:a9fe::") >= 3
    # IPv6 as IPv4: neighbour discovery and MLD left to the kernel (and the agent's pkt0) first,
    # then link-local and multicast destinations to the service queues, then each VM's data queue
    from_vms6 = chain(text, "from_vms", "ip6")
    # (from a tap to any other destination, they are dropped: the node forwards IPv6)
    drops = [line.strip() for line in from_vms6.splitlines() if line.strip().endswith("drop")]
    assert len(drops) == 2 and all(d.startswith('iifname "tap*" icmpv6 type') and "ip6 daddr != fe80::/10" in d for d in drops), drops
    order = [from_vms6.index(x) for x in ("notrack drop", "notrack accept", "jump", "jump from_vms_0")] + [from_vms6.rindex('iifname "tap*"')]
    assert order == sorted(order), order
    jumps6 = [line.strip() for line in from_vms6.splitlines() if "jump from_vms_to_services" in line]
    assert jumps6 == ["ip6 daddr fe80::/10 jump from_vms_to_services", "ip6 daddr ff00::/8 jump from_vms_to_services"]
    assert chain(text, "from_vms_0", "ip6").count("iif ") == 3 and chain(text, "from_vms_to_services_0", "ip6").count("iif ") == 3


def test_many_vms_sit_in_buckets_and_a_replacement_is_whole_without_deleting_the_table(ns):
    apply(ns, QueueRules(vms=vms(40)))
    text = ruleset(ns)
    n = buckets_for(40)
    assert n == 16
    assert len(re.findall(r"jump from_vms_\d+\b", text)) == 2 * n  # IPv4 and IPv6
    assert len(re.findall(r"jump from_vms_to_services_\d+\b", text)) == 2 * n
    assert text.count("jump to_metadata_ips_") == 2 * n
    bucket_rules = sum(c.split("}")[0].count("iif ") for c in re.split(r"chain from_vms_\d+ ", text)[1:])
    assert bucket_rules == 2 * 40  # each VM once per family, in the bucket of its interface's low bits
    service_rules = sum(c.split("}")[0].count("iif ") for c in re.split(r"chain from_vms_to_services_\d+ ", text)[1:])
    assert service_rules == 2 * 40
    handles = base_chain_handles(ns)
    apply(ns, QueueRules(vms=vms(2)))  # fewer again: the buckets the new tables do not have are gone
    text = ruleset(ns)
    assert not re.search(r"from_vms_[1-9]|from_vms_to_services_[1-9]|to_metadata_ips_[1-9]", text)
    assert chain(text, "from_vms_0").count("iif ") == 2 and chain(text, "from_vms_0", "ip6").count("iif ") == 2
    assert text.count("table ip vrouter") == 1 and text.count("table ip6 vrouter") == 1
    # the base chains were kept (a table deleted takes its hooks, and the kernel drops what waits in every queue)
    assert base_chain_handles(ns) == handles


def base_chain_handles(ns) -> list[str]:  # noqa: ANN001
    """The handles of our tables and their base chains, in the order nft lists them."""
    text = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-a", "list", "ruleset"], capture_output=True, text=True).stdout
    found = re.findall(r"(?:table ip6? vrouter|chain from_vms|chain to_metadata_ips) \{ # handle \d+", text)
    assert len(found) == 6, text
    return found


def test_vms_appended_land_in_their_buckets_and_the_rest_is_untouched(ns):
    apply(ns, QueueRules(vms=vms(40)))
    before = ruleset(ns)
    ns.run(lambda: NftSocket().append_vms(vms(42)[40:], buckets_for(40)))
    text = ruleset(ns)
    for vm in vms(42)[40:]:
        b = vm.ifindex & (buckets_for(40) - 1)
        assert chain(text, "from_vms_%d" % b).rstrip().endswith("iif %d counter packets 0 bytes 0 notrack" % vm.ifindex)
        assert "iif %d " % vm.ifindex in chain(text, "from_vms_to_services_%d" % b, "ip6")
        assert "ip daddr %s " % socket.inet_ntoa(vm.metadata_ip) in chain(text, "to_metadata_ips_%d" % (vm.metadata_ip[-1] & 15))
    assert len(re.findall(r"\biif \d+ ", text)) == len(re.findall(r"\biif \d+ ", before)) + 2 * 2 * 2  # two VMs, two chains, two families
