"""network_data.json for dual-stack ports, as Nova's ``nova/virt/netutils.py`` renders it (pure
code): each Neutron ``ipv6_address_mode``, old records without IPv6 unchanged to the byte, and,
where cloud-init is importable, what its ``convert_net_json`` makes of it."""

import json

import pytest

from fabric.nova_tree import InstanceMetadata, network_data

UUID = "0b9c4f2e-7a51-4c4b-9d6e-0d3c1f5a2b77"
PORT = "11111111-2222-3333-4444-555555555555"
VN = "8b2c0a4e-1f3d-4e5a-9c6b-7d8e9f0a1b2c"
MAC = "02:00:0a:01:01:03"
# an old record: a guest whose subnet has DHCP
OLD = {"uuid": UUID, "ip": "10.1.1.3", "mac": MAC, "port_uuid": PORT, "vn_uuid": VN, "gateway": "10.1.1.1", "dns_server": "10.1.1.2", "dhcp": True}
V6 = {"ip6": "fd00:10:1:1::3", "ipv6_prefix": "fd00:10:1:1::/64", "ipv6_gateway": "fd00:10:1:1::1", "ipv6_dns_server": "fd00:10:1:1::2"}
SLAAC_IP6 = "fd00:10:1:1:0:aff:fe01:103"  # EUI-64 of MAC, as Neutron computes it
LINK = {"id": "tap11111111-22", "vif_id": PORT, "type": "phy", "mtu": 1500, "ethernet_mac_address": MAC}


def dual(mode: str, **more: object) -> dict:
    inst = dict(OLD, **V6, ipv6_mode=mode)
    if mode in ("slaac", "dhcpv6-stateless"):
        inst["ip6"] = SLAAC_IP6
    inst.update(more)
    return inst


# What Nova 2025.x writes for a port on a Neutron network with an IPv4 subnet (DHCP on) and an IPv6
# subnet of each address mode: get_network_metadata numbers the networks per port, IPv4 first;
# _get_nets gives an IPv6 subnet with an address mode the type "ipv6_<mode>" and, like a static
# network, the address, the subnet's netmask, the default route and the subnet's DNS servers.
def nova_dual_stack(net_type: str, ip6: str) -> dict:
    return {
        "links": [{"id": "tap11111111-22", "vif_id": PORT, "type": "phy", "mtu": 1500, "ethernet_mac_address": MAC}],
        "networks": [
            {"id": "network0", "link": "tap11111111-22", "network_id": VN, "type": "ipv4_dhcp"},
            {
                "id": "network1",
                "type": net_type,
                "link": "tap11111111-22",
                "ip_address": ip6,
                "netmask": "ffff:ffff:ffff:ffff::",
                "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:10:1:1::1"}],
                "network_id": VN,
                "services": [{"type": "dns", "address": "fd00:10:1:1::2"}],
            },
        ],
        "services": [{"type": "dns", "address": "10.1.1.2"}, {"type": "dns", "address": "fd00:10:1:1::2"}],
    }


@pytest.mark.parametrize(
    "mode, net_type, ip6",
    [
        ("none", "ipv6", "fd00:10:1:1::3"),
        ("slaac", "ipv6_slaac", SLAAC_IP6),
        ("dhcpv6-stateful", "ipv6_dhcpv6-stateful", "fd00:10:1:1::3"),
        ("dhcpv6-stateless", "ipv6_dhcpv6-stateless", SLAAC_IP6),
    ],
)
def test_each_ipv6_mode_as_nova_renders_it(mode, net_type, ip6):
    assert network_data(dual(mode)) == nova_dual_stack(net_type, ip6)


def test_ipv6_network_keys_are_in_novas_order():
    net6 = network_data(dual("slaac"))["networks"][1]
    assert list(net6) == ["id", "type", "link", "ip_address", "netmask", "routes", "network_id", "services"]


def test_static_ipv4_beside_ipv6_keeps_its_own_services():
    inst = dual("none", dhcp=False)
    assert network_data(inst) == {
        "links": [LINK],
        "networks": [
            {
                "id": "network0",
                "link": "tap11111111-22",
                "network_id": VN,
                "type": "ipv4",
                "ip_address": "10.1.1.3",
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.1.1.1"}],
                "services": [{"type": "dns", "address": "10.1.1.2"}],
            },
            {
                "id": "network1",
                "type": "ipv6",
                "link": "tap11111111-22",
                "ip_address": "fd00:10:1:1::3",
                "netmask": "ffff:ffff:ffff:ffff::",
                "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:10:1:1::1"}],
                "network_id": VN,
                "services": [{"type": "dns", "address": "fd00:10:1:1::2"}],
            },
        ],
        "services": [{"type": "dns", "address": "10.1.1.2"}, {"type": "dns", "address": "fd00:10:1:1::2"}],
    }


def test_ipv6_without_gateway_dns_or_a_64():
    # Nova: no default route without a gateway, no services without dns_nameservers; the netmask
    # is the subnet's, whatever its length
    inst = dual("dhcpv6-stateful", ipv6_prefix="fd00:10:1:1::/120", ipv6_gateway="", ipv6_dns_server="")
    net6 = network_data(inst)["networks"][1]
    assert (net6["netmask"], net6["routes"], net6["services"]) == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00", [], [])
    assert network_data(inst)["services"] == [{"type": "dns", "address": "10.1.1.2"}]
    # a record with an address and no prefix: the /64 of the address
    assert network_data(dual("none", ipv6_prefix=""))["networks"][1]["netmask"] == "ffff:ffff:ffff:ffff::"
    # ipv6_mode absent or "": Neutron's subnet without an address mode
    assert network_data(dual("", ip6="fd00:10:1:1::3")) == nova_dual_stack("ipv6", "fd00:10:1:1::3")


def test_ipv6_only_port_is_network0():
    inst = dual("slaac", ip="")
    assert network_data(inst) == {
        "links": [LINK],
        "networks": [
            {
                "id": "network0",
                "type": "ipv6_slaac",
                "link": "tap11111111-22",
                "ip_address": SLAAC_IP6,
                "netmask": "ffff:ffff:ffff:ffff::",
                "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:10:1:1::1"}],
                "network_id": VN,
                "services": [{"type": "dns", "address": "fd00:10:1:1::2"}],
            }
        ],
        "services": [{"type": "dns", "address": "fd00:10:1:1::2"}],
    }


def test_unknown_ipv6_mode_names_the_record_and_the_modes():
    with pytest.raises(ValueError, match=r"instance %s: ipv6_mode 'dhcp' is not one of none, slaac, dhcpv6-stateful, dhcpv6-stateless" % UUID):
        network_data(dual("dhcp"))


# Today's bytes for records without IPv6 (the key order is this module's, not Nova's, whose IPv4
# networks start id, type, link): unchanged.
OLD_DHCP_JSON = (
    '{"links": [{"id": "tap11111111-22", "vif_id": "%s", "type": "phy", "mtu": 1500, "ethernet_mac_address": "%s"}], '
    '"networks": [{"id": "network0", "link": "tap11111111-22", "network_id": "%s", "type": "ipv4_dhcp"}], '
    '"services": [{"type": "dns", "address": "10.1.1.2"}]}' % (PORT, MAC, VN)
)
OLD_STATIC_JSON = (
    '{"links": [{"id": "tap11111111-22", "vif_id": "%s", "type": "phy", "mtu": 1500, "ethernet_mac_address": "%s"}], '
    '"networks": [{"id": "network0", "link": "tap11111111-22", "network_id": "%s", "type": "ipv4", "ip_address": "10.1.1.3", '
    '"netmask": "255.255.255.0", "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.1.1.1"}], '
    '"services": [{"type": "dns", "address": "10.1.1.2"}]}], '
    '"services": [{"type": "dns", "address": "10.1.1.2"}]}' % (PORT, MAC, VN)
)


@pytest.mark.parametrize("blank", [{}, {"ip6": "", "ipv6_mode": "", "ipv6_prefix": "", "ipv6_gateway": "", "ipv6_dns_server": ""}])
def test_old_record_renders_as_before(blank):
    assert json.dumps(network_data(dict(OLD, **blank))) == OLD_DHCP_JSON
    assert json.dumps(network_data(dict(OLD, dhcp=False, **blank))) == OLD_STATIC_JSON
    assert network_data(dict(OLD, ip="", **blank)) == {"links": [], "networks": [], "services": []}


def test_service_and_drive_serve_the_rendering():
    md = InstanceMetadata(dual("dhcpv6-stateless"))
    found = md.lookup("/openstack/latest/network_data.json")
    assert json.loads(found.data) == nova_dual_stack("ipv6_dhcpv6-stateless", SLAAC_IP6)
    assert (
        dict(InstanceMetadata(dual("dhcpv6-stateless"), config_drive=True).metadata_for_config_drive())["openstack/latest/network_data.json"]
        == found.data
    )


# cloud-init's reading of it (cloudinit/sources/helpers/openstack.py): each IPv6 type is one it
# knows, so the guest gets an inet6 stanza beside IPv4's DHCP and both DNS servers.
CLOUD_INIT_SUBNET = {
    "none": {"type": "static6", "address": "fd00:10:1:1::3", "netmask": "ffff:ffff:ffff:ffff::", "ipv6": True},
    "slaac": {"type": "ipv6_slaac", "netmask": "ffff:ffff:ffff:ffff::"},
    "dhcpv6-stateful": {"type": "ipv6_dhcpv6-stateful", "netmask": "ffff:ffff:ffff:ffff::"},
    "dhcpv6-stateless": {"type": "ipv6_dhcpv6-stateless", "netmask": "ffff:ffff:ffff:ffff::"},
}
CLOUD_INIT_ACCEPT_RA = {"none": False, "dhcpv6-stateful": True}


@pytest.mark.parametrize("mode", list(CLOUD_INIT_SUBNET))
def test_cloud_init_converts_it(mode):
    openstack = pytest.importorskip(
        "cloudinit.sources.helpers.openstack", reason="cloud-init is not importable here (it is the guest's; not installed on this machine)"
    )
    # as the guest reads it: JSON, not this process's objects (cloud-init 22.4 edits services in place)
    nd = json.loads(json.dumps(network_data(dual(mode))))
    config = openstack.convert_net_json(nd, known_macs={MAC: "eth0"})["config"]
    eth0, *nameservers = config
    assert (eth0["type"], eth0["name"], eth0["mac_address"], eth0["mtu"]) == ("physical", "eth0", MAC, 1500)
    assert eth0.get("accept-ra") == CLOUD_INIT_ACCEPT_RA.get(mode)
    dhcp4, subnet6 = eth0["subnets"]
    assert dhcp4["type"] == "dhcp4"
    routes = [{k: r[k] for k in ("network", "netmask", "gateway")} for r in subnet6.pop("routes")]
    assert routes == [{"network": "::", "netmask": "::", "gateway": "fd00:10:1:1::1"}]
    subnet6.pop("dns_nameservers", None)  # cloud-init 24.1 and later copy the network's DNS here
    assert subnet6 == CLOUD_INIT_SUBNET[mode]
    assert [(n["type"], n["address"]) for n in nameservers] == [("nameserver", "10.1.1.2"), ("nameserver", "fd00:10:1:1::2")]
