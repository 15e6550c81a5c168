"""rt --dump, nh --list / --get and mpls --dump print as tf-vrouter's utils/rt.c, nh.c and mpls.c do:
the expected lines are written from those printf formats (and checked against outputs of the real
tools pasted in the docstrings of tf-vrouter's tests/*.py and in troubleshooting notes)."""

from vrouter.messages.control import MplsRecord, NhRecord, RouteRecord, RouteTable
from vrouter.tools.overlay import ether_ntoa, format_mpls, format_nh, format_nh_list, format_rt

VM_MAC = "02:c2:23:4c:d0:55"

LOCAL = RouteRecord("10.1.1.3", 32, nh=21, label=-1, flags="P", mac=VM_MAC, node="compute1", port_uuid="p3")
REMOTE = RouteRecord("10.1.1.4", 32, nh=25, label=17, flags="LP", node="compute2")
GATEWAY = RouteRecord("10.1.1.1", 32, nh=10, label=-1, flags="PT")

TUNNEL = NhRecord(25, "Tunnel", vrf=0, ref_count=2, flags=["MPLSoUDP", "Valid"], oif=0, sip="10.10.0.11", dip="10.10.0.12", node="compute2")
ENCAP = NhRecord(21, "Encap", vrf=2, ref_count=3, flags=["Valid", "Policy"], oif=3, mac=VM_MAC)
RECEIVE = NhRecord(10, "Receive", vrf=2, ref_count=1, flags=["Valid"], oif=1)
DROP = NhRecord(0, "Drop", vrf=0, ref_count=1, flags=["Valid"])


def test_rt_dump_has_rt_c_headers():
    lines = format_rt(RouteTable(2, "net1", "vn1", [])).splitlines()
    assert lines == [
        "Flags: L=Label Valid, P=Proxy ARP, T=Trap ARP, F=Flood ARP, Ml=MAC-IP learnt route",
        "vRouter inet4 routing table 0/2/unicast",
        "Destination           PPL        Flags        Label         Nexthop    Stitched MAC(Index)",
    ]


def test_rt_dump_rows_a_local_route_with_its_mac_and_a_remote_one_with_its_label():
    lines = format_rt(RouteTable(2, "net1", "vn1", [REMOTE, LOCAL, GATEWAY])).splitlines()
    assert lines[3:] == [  # by address
        "10.1.1.1/32            32           PT          -             10        -",
        "10.1.1.3/32            32            P          -             21        2:c2:23:4c:d0:55(0)",
        "10.1.1.4/32            32           LP         17             25        -",
    ]


def test_rt_dump_sorts_by_address_not_text_and_prints_short_prefixes_left_aligned():
    routes = [RouteRecord("10.1.1.20", 32, 21, -1, "P"), RouteRecord("10.1.1.3", 32, 22, -1, "P"), RouteRecord("0.0.0.0", 8, 0, -1, "")]
    lines = format_rt(RouteTable(3, "", "", routes)).splitlines()
    assert [line.split()[0] for line in lines[3:]] == ["0.0.0.0/8", "10.1.1.3/32", "10.1.1.20/32"]
    assert lines[3] == "0.0.0.0/8               8                       -              0        -"


def test_rt_dump_a_label_shows_only_with_the_l_flag():
    (row,) = format_rt(RouteTable(2, "", "", [RouteRecord("10.1.1.5", 32, 21, 16, "P")])).splitlines()[3:]
    assert row.split() == ["10.1.1.5/32", "32", "P", "-", "21", "-"]


def test_rt_dump_one_family_at_a_time():
    v6 = RouteRecord("fd00:10:1:1::3", 128, nh=21, label=-1, flags="P", mac=VM_MAC)
    table = RouteTable(2, "net1", "vn1", [LOCAL, v6])
    assert [line.split()[0] for line in format_rt(table).splitlines()[3:]] == ["10.1.1.3/32"]
    lines = format_rt(table, family="inet6").splitlines()
    assert lines[1] == "vRouter inet6 routing table 0/2/unicast"
    assert lines[3:] == ["fd00:10:1:1::3/128    128            P          -             21        2:c2:23:4c:d0:55(0)"]


def test_nh_tunnel_block_is_mpls_over_udp_with_its_addresses():
    assert format_nh(TUNNEL).split("\n") == [
        "Id:25         Type:Tunnel         Fmly: AF_INET  Rid:0  Ref_cnt:2          Vrf:0",
        "              Flags:Valid, MPLSoUDP, ",  # nh_flags' order (the bits'), and its trailing ", "
        "              Oif:0 Len:0 Data:",
        "              Sip:10.10.0.11 Dip:10.10.0.12",
        "",
        "",
    ]


def test_nh_encap_block_is_the_vms_ethernet_header():
    assert format_nh(ENCAP).split("\n") == [
        "Id:21         Type:Encap          Fmly: AF_INET  Rid:0  Ref_cnt:3          Vrf:2",
        "              Flags:Valid, Policy, ",
        "              EncapFmly:0806 Oif:3 Len:14",
        "              Encap Data: 02 c2 23 4c d0 55 00 00 5e 00 01 00 08 00 ",  # the VM's MAC, the vRouter's, IPv4
        "",
        "",
    ]


def test_nh_receive_has_its_oif_and_drop_nothing_more():
    assert format_nh(RECEIVE).split("\n")[1:] == ["              Flags:Valid, ", "              Oif:1", "", ""]
    assert format_nh(DROP).split("\n") == [
        "Id:0          Type:Drop           Fmly: AF_INET  Rid:0  Ref_cnt:1          Vrf:0",
        "              Flags:Valid, ",
        "",
        "",
    ]


def test_nh_flags_none_and_an_ipv6_tunnel():
    nh = NhRecord(30, "Tunnel", vrf=0, ref_count=1, flags=[], oif=0, sip="fd00:10::11", dip="fd00:10::12")
    lines = format_nh(nh).split("\n")
    assert lines[0] == "Id:30         Type:Tunnel         Fmly:AF_INET6  Rid:0  Ref_cnt:1          Vrf:0"
    assert lines[1] == "              Flags:None"
    assert lines[3] == "              Sip: fd00:10::11 Dip: fd00:10::12"


def test_nh_list_is_the_blocks_by_id():
    text = format_nh_list([TUNNEL, DROP, ENCAP, RECEIVE])
    assert text == "".join(format_nh(nh) for nh in [DROP, RECEIVE, ENCAP, TUNNEL])
    assert [line.split()[0] for line in text.splitlines() if line.startswith("Id:")] == ["Id:0", "Id:10", "Id:21", "Id:25"]
    assert format_nh_list([]) == ""


def test_mpls_dump():
    assert format_mpls([MplsRecord(17, 25), MplsRecord(16, 21), MplsRecord(1234, 7)]).splitlines() == [
        "MPLS Input Label Map",
        "",
        "   Label    NextHop",
        "-------------------",
        "      16        21",
        "      17        25",
        "    1234         7",
    ]


def test_ether_ntoa_drops_leading_zeros():
    assert ether_ntoa("00:00:5e:00:01:00") == "0:0:5e:0:1:0"
    assert ether_ntoa("02:0D:C4:D4:28:59") == "2:d:c4:d4:28:59"
