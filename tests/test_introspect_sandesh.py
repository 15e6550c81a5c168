"""Sandesh's wire forms as pure code: XML responses, answers, arguments, page keys, module and index pages, the schema."""

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vrouter.introspect import sandesh, schema
from vrouter.introspect.sandesh import NOT_FOUND, PageKey, decode_key, document, encode_key, paged, parse_query, response

PI = '<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>'
NIL = "00000000-0000-0000-0000-000000000000"

# The research's ItfSandeshData sample (§3.1), without its pretty-printing.
ITF_ROW_XML = (
    '<ItfSandeshData><index type="i32" identifier="1">3</index><name type="string" identifier="2">tap1b2c3d4e-5f</name>'
    '<uuid type="string" identifier="3">1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d</uuid>'
    '<vrf_name type="string" identifier="4" link="VrfListReq">default-domain:admin:vn1:vn1</vrf_name>'
    '<active type="string" identifier="5">Active</active><ipv4_active type="string" identifier="49">Active</ipv4_active>'
    '<l2_active type="string" identifier="28">L2 Active</l2_active>'
    '<ip6_active type="string" identifier="35">Ipv6 Inactive &lt; no-ipv6-addr  &gt;</ip6_active>'
    '<health_check_active type="string" identifier="53">Active</health_check_active>'
    '<dhcp_service type="string" identifier="6">Enable</dhcp_service><dhcp_service_v6 type="string" identifier="72">Enable</dhcp_service_v6>'
    '<dns_service type="string" identifier="7">Enable</dns_service><type type="string" identifier="8">vport</type>'
    '<label type="i32" identifier="9">17</label><l2_label type="i32" identifier="25">18</l2_label><vxlan_id type="i32" identifier="26">0</vxlan_id>'
    '<vn_name type="string" identifier="10" link="VnListReq">default-domain:admin:vn1</vn_name>'
    '<vm_uuid type="string" identifier="11" link="VmListReq">9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d</vm_uuid>'
    '<vm_name type="string" identifier="12">vm1</vm_name><ip_addr type="string" identifier="13">10.0.0.3</ip_addr>'
    '<mac_addr type="string" identifier="14">02:1b:2c:3d:4e:5f</mac_addr><policy type="string" identifier="15">Enable</policy>'
    '<fip_list type="list" identifier="16"><list type="struct" size="0"></list></fip_list>'
    '<mdata_ip_addr type="string" identifier="17">169.254.0.3</mdata_ip_addr><service_vlan_list type="list" identifier="18">'
    '<list type="struct" size="0"></list></service_vlan_list><os_ifindex type="i32" identifier="19">12</os_ifindex>'
    '<fabric_port type="string" identifier="20">NotFabricPort</fabric_port>'
    '<alloc_linklocal_ip type="string" identifier="21">LL-Enable</alloc_linklocal_ip><analyzer_name type="string" identifier="22"></analyzer_name>'
    '<config_name type="string" identifier="23">default-domain:admin:1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d</config_name>'
    '<sg_uuid_list type="list" identifier="24"><list type="struct" size="1"><VmIntfSgUuid>'
    '<sg_uuid type="string" identifier="1" link="SgListReq">5c6d7e8f-0a1b-4c2d-8e3f-4a5b6c7d8e9f</sg_uuid></VmIntfSgUuid></list></sg_uuid_list>'
    '<static_route_list type="list" identifier="27"><list type="struct" size="0"></list></static_route_list>'
    '<vm_project_uuid type="string" identifier="30">7d6c5b4a-3f2e-4d1c-9b0a-8f7e6d5c4b3a</vm_project_uuid>'
    '<admin_state type="string" identifier="31">Enabled</admin_state><flow_key_idx type="i32" identifier="32">25</flow_key_idx>'
    '<allowed_address_pair_list type="list" identifier="33"><list type="struct" size="0"></list></allowed_address_pair_list>'
    '<ip6_addr type="string" identifier="34">::</ip6_addr><local_preference type="i32" identifier="36">0</local_preference>'
    '<tx_vlan_id type="i16" identifier="37">-1</tx_vlan_id><rx_vlan_id type="i16" identifier="38">-1</rx_vlan_id>'
    '<parent_interface type="string" identifier="39"></parent_interface><subnet type="string" identifier="40">--NA--</subnet>'
    '<sub_type type="string" identifier="41">Tap</sub_type>'
    '<vrf_assign_acl_uuid type="string" identifier="42" link="AclReq">--NA--</vrf_assign_acl_uuid>'
    '<vmi_type type="string" identifier="43">Virtual Machine</vmi_type><transport type="string" identifier="44">Ethernet</transport>'
    '<logical_interface_uuid type="string" identifier="45">00000000-0000-0000-0000-000000000000</logical_interface_uuid>'
    '<flood_unknown_unicast type="bool" identifier="46">false</flood_unknown_unicast><physical_device type="string" identifier="47">'
    '</physical_device><physical_interface type="string" identifier="48"></physical_interface><fixed_ip4_list type="list" identifier="50">'
    '<list type="string" size="1"><element>10.0.0.3</element></list></fixed_ip4_list><fixed_ip6_list type="list" identifier="51">'
    '<list type="string" size="0"></list></fixed_ip6_list><fat_flow_list type="list" identifier="52"><list type="string" size="0"></list>'
    '</fat_flow_list><metadata_ip_active type="string" identifier="54">Active</metadata_ip_active>'
    '<service_health_check_ip type="string" identifier="55">0.0.0.0</service_health_check_ip><alias_ip_list type="list" identifier="57">'
    '<list type="struct" size="0"></list></alias_ip_list><drop_new_flows type="bool" identifier="58">false</drop_new_flows>'
    '<bridge_domain_list type="list" identifier="59"><list type="struct" size="0"></list></bridge_domain_list>'
    '<vmi_tag_list type="list" identifier="60"><list type="struct" size="0"></list></vmi_tag_list><policy_set_acl_list type="list" identifier="61">'
    '<list type="string" size="0"></list></policy_set_acl_list><slo_list type="list" identifier="62"><list type="struct" size="0"></list>'
    '</slo_list><vhostuser_mode type="byte" identifier="63">0</vhostuser_mode>'
    '<si_other_end_vmi type="string" identifier="64">00000000-0000-0000-0000-000000000000</si_other_end_vmi>'
    '<cfg_igmp_enable type="bool" identifier="65">false</cfg_igmp_enable><igmp_enabled type="bool" identifier="66">false</igmp_enabled>'
    '<max_flows type="i32" identifier="67">0</max_flows><policy_set_fwaas_list type="list" identifier="68"><list type="string" size="0"></list>'
    '</policy_set_fwaas_list><bond_interface_list type="list" identifier="69"><list type="struct" size="0"></list></bond_interface_list>'
    '<mac_ip_learning_enable type="bool" identifier="70">false</mac_ip_learning_enable><mac_ip_list type="list" identifier="71">'
    '<list type="struct" size="0"></list></mac_ip_list></ItfSandeshData>'
)

ITF_ROW = {
    "index": 3, "name": "tap1b2c3d4e-5f", "uuid": "1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d", "vrf_name": "default-domain:admin:vn1:vn1",
    "active": "Active", "ipv4_active": "Active", "l2_active": "L2 Active", "ip6_active": "Ipv6 Inactive < no-ipv6-addr  >",
    "health_check_active": "Active", "dhcp_service": "Enable", "dhcp_service_v6": "Enable", "dns_service": "Enable", "type": "vport",
    "label": 17, "l2_label": 18, "vn_name": "default-domain:admin:vn1", "vm_uuid": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "vm_name": "vm1",
    "ip_addr": "10.0.0.3", "mac_addr": "02:1b:2c:3d:4e:5f", "policy": "Enable", "mdata_ip_addr": "169.254.0.3", "os_ifindex": 12,
    "fabric_port": "NotFabricPort", "alloc_linklocal_ip": "LL-Enable", "config_name": "default-domain:admin:1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d",
    "sg_uuid_list": [{"sg_uuid": "5c6d7e8f-0a1b-4c2d-8e3f-4a5b6c7d8e9f"}], "vm_project_uuid": "7d6c5b4a-3f2e-4d1c-9b0a-8f7e6d5c4b3a",
    "admin_state": "Enabled", "flow_key_idx": 25, "allowed_address_pair_list": [], "ip6_addr": "::",
    "tx_vlan_id": 0xFFFF, "rx_vlan_id": -1,  # i16: 0xFFFF is written -1, as the C++ setter would store it
    "subnet": "--NA--", "sub_type": "Tap", "vrf_assign_acl_uuid": "--NA--", "vmi_type": "Virtual Machine", "transport": "Ethernet",
    "logical_interface_uuid": NIL, "flood_unknown_unicast": False, "fixed_ip4_list": ["10.0.0.3"], "metadata_ip_active": "Active",
    "service_health_check_ip": "0.0.0.0", "si_other_end_vmi": NIL,
}  # fmt: skip
ITF_PAGINATION = (
    '<Pagination type="sandesh"><req type="struct" identifier="1"><PageReqData>'
    '<prev_page type="string" identifier="1" link="PageReq"></prev_page><next_page type="string" identifier="2" link="PageReq"></next_page>'
    '<first_page type="string" identifier="3" link="PageReq">begin:0,end:99,table:db.interface.0,</first_page>'
    '<all type="string" identifier="4" link="PageReq">begin:-1,end:-1,table:db.interface.0,</all>'
    '<table_size type="u32" identifier="5">5</table_size><entries type="string" identifier="6">0-4/5</entries>'
    '</PageReqData></req><more type="bool" identifier="0">false</more></Pagination>'
)


def parse(body: bytes) -> ET.Element:
    """What lxml-using clients do with an answer: parse it as XML (no declaration, the stylesheet PI first)."""
    return ET.fromstring(body)


def data_rows(root: ET.Element, resp: str, list_field: str) -> list[list[ET.Element]]:
    return [list(r.iterfind(f"{list_field}/list/*")) for r in root.findall(resp)]


def page_data(root: ET.Element) -> dict[str, str]:
    data = root.find("Pagination/req/PageReqData")
    assert data is not None
    return {child.tag: child.text or "" for child in data}


# ---------------------------------------------------------------------------------------------------------------
# Responses and documents


def test_metadata_response_single_document_exact():
    values = {"metadata_server_port": 8775, "metadata_requests": 12, "metadata_responses": 12, "metadata_proxy_sessions": 12}
    expected = (
        PI + '<MetadataResponse type="sandesh"><metadata_server_port type="i32" identifier="1">8775</metadata_server_port>'
        '<metadata_requests type="i32" identifier="2">12</metadata_requests><metadata_responses type="i32" identifier="3">12</metadata_responses>'
        '<metadata_proxy_sessions type="i32" identifier="4">12</metadata_proxy_sessions>'
        '<metadata_internal_errors type="i32" identifier="5">0</metadata_internal_errors>'
        '<more type="bool" identifier="0">false</more></MetadataResponse>'
    )
    assert document([response("MetadataResponse", values)]) == expected.encode()


def test_itf_row_matches_the_research_sample():
    xml = response("ItfResp", {"itf_list": [ITF_ROW]})
    inner = xml.removeprefix('<ItfResp type="sandesh"><itf_list type="list" identifier="1"><list type="struct" size="1">')
    assert inner.removesuffix('</list></itf_list><more type="bool" identifier="0">false</more></ItfResp>') == ITF_ROW_XML


def test_itf_slist_with_pagination_for_five_rows_exact():
    body = document(paged("ItfResp", "itf_list", "db.interface.0", [ITF_ROW] * 5, 5))
    head = '<__ItfResp_list type="slist"><ItfResp type="sandesh"><itf_list type="list" identifier="1"><list type="struct" size="5">'
    tail = '</list></itf_list><more type="bool" identifier="0">true</more></ItfResp>' + ITF_PAGINATION + "</__ItfResp_list>"
    assert body == (PI + head + ITF_ROW_XML * 5 + tail).encode()
    root = parse(body)
    assert root.tag == "__ItfResp_list" and root.get("type") == "slist"
    assert [e.findtext("name") for e in root.iter("ItfSandeshData")] == ["tap1b2c3d4e-5f"] * 5


def test_error_responses_exact():
    expected = (
        '<ErrorResp type="sandesh"><resp type="string" identifier="1">   Invalid Input !!!   </resp><more type="bool" identifier="0">false</more>'
    )
    assert sandesh.error() == (PI + expected + "</ErrorResp>").encode()
    assert sandesh.error("Invalid request") == (PI + expected.replace("   Invalid Input !!!   ", "Invalid request") + "</ErrorResp>").encode()
    assert sandesh.error(name="ErrResp") == (PI + expected.replace("ErrorResp", "ErrResp") + "</ErrResp>").encode()
    flow = expected.replace("ErrorResp", "FlowErrorResp").replace("   Invalid Input !!!   ", "No Flow Record for specified key ")
    assert sandesh.flow_error() == (PI + flow + "</FlowErrorResp>").encode()
    # A response with nothing given writes its declared defaults.
    assert response("ErrorResp", {}) == response("ErrorResp", {"resp": "   Invalid Input !!!   "})


def test_kflow_response_exact_with_byte_and_optional_fields():
    flow = {
        "index": 412, "rflow": 388, "sip": "10.0.0.3", "sport": 43211, "dip": "169.254.169.254", "dport": 80, "proto": 6, "vrf_id": 2,
        "action": "NAT", "flags": " ACTIVE | DNAT | RFLOW_VALID ", "bytes": 1266, "pkts": 9, "nhid": 29,
        "tcp_flags": " SYN | SYN_R | ESTB | ESTB_R ", "qos_id": -1, "gen_id": 3, "underlay_gw_index": -1,
    }  # fmt: skip
    expected = (
        PI + '<KFlowResp type="sandesh"><flow_list type="list" identifier="1"><list type="struct" size="1"><KFlowInfo>'
        '<index type="i32" identifier="1">412</index><rflow type="i32" identifier="2">388</rflow><sip type="string" identifier="3">10.0.0.3</sip>'
        '<sport type="i32" identifier="4">43211</sport><dip type="string" identifier="5">169.254.169.254</dip>'
        '<dport type="i32" identifier="6">80</dport>'
        '<proto type="byte" identifier="7">6</proto><vrf_id type="i16" identifier="8">2</vrf_id><action type="string" identifier="9">NAT</action>'
        '<flags type="string" identifier="10"> ACTIVE | DNAT | RFLOW_VALID </flags><d_vrf_id type="i16" identifier="11">0</d_vrf_id>'
        '<bytes type="i32" identifier="12">1266</bytes><pkts type="i32" identifier="13">9</pkts><insight type="i32" identifier="14">0</insight>'
        '<nhid type="i32" identifier="18">29</nhid><underlay_udp_sport type="u16" identifier="19">0</underlay_udp_sport>'
        '<tcp_flags type="string" identifier="20"> SYN | SYN_R | ESTB | ESTB_R </tcp_flags><ttl type="u16" identifier="22">0</ttl>'
        '<qos_id type="i16" identifier="23">-1</qos_id><gen_id type="i16" identifier="24">3</gen_id>'
        '<tcp_seq type="u16" identifier="25">0</tcp_seq>'
        '<oflow_bytes type="u16" identifier="26">0</oflow_bytes><oflow_packets type="u16" identifier="27">0</oflow_packets>'
        '<underlay_gw_index type="i16" identifier="28">-1</underlay_gw_index></KFlowInfo></list></flow_list>'
        '<flow_handle type="string" identifier="2" link="NextKFlowReq">0</flow_handle><more type="bool" identifier="0">false</more></KFlowResp>'
    )
    assert document([response("KFlowResp", {"flow_list": [flow], "flow_handle": "0"})]) == expected.encode()


def test_trace_responses_exact():
    lines = ["1765101600123456 MetadataTrace: GET request for VM : 10.0.0.3 URL : /latest/meta-data/"]
    assert response("SandeshTraceTextResponse", {"traces": lines}) == (
        '<SandeshTraceTextResponse type="sandesh"><traces type="list" identifier="1"><list type="string" size="1">'
        f"<element>{lines[0]}</element></list></traces>"
        '<more type="bool" identifier="0">false</more></SandeshTraceTextResponse>'
    )
    assert response("SandeshTraceTextResponse", {}) == (
        '<SandeshTraceTextResponse type="sandesh"><traces type="list" identifier="1"><list type="string" size="0"></list></traces>'
        '<more type="bool" identifier="0">false</more></SandeshTraceTextResponse>'
    )
    assert response("SandeshTraceBufferListResponse", {"trace_buffer_list": [{"trace_buf_name": "Dhcp"}]}) == (
        '<SandeshTraceBufferListResponse type="sandesh"><trace_buffer_list type="list" identifier="1"><list type="struct" size="1">'
        '<SandeshTraceBufInfo><trace_buf_name type="string" identifier="1" link="SandeshTraceRequest">Dhcp</trace_buf_name>'
        '</SandeshTraceBufInfo></list></trace_buffer_list><more type="bool" identifier="0">false</more></SandeshTraceBufferListResponse>'
    )


def test_several_responses_are_wrapped_after_the_first():
    body = document([response("DhcpStats", {}, more=True), response("DhcpPktSandesh", {"type": "Dhcp", "pkt_list": []})])
    assert body.startswith((PI + '<__DhcpStats_list type="slist"><DhcpStats type="sandesh"><dhcp_discover type="i32" identifier="1">0<').encode())
    assert body.endswith(
        b'<DhcpPktSandesh type="sandesh"><type type="string" identifier="1">Dhcp</type><pkt_list type="list" identifier="2">'
        b'<list type="struct" size="0"></list></pkt_list><more type="bool" identifier="0">false</more></DhcpPktSandesh></__DhcpStats_list>'
    )
    assert [child.tag for child in parse(body)] == ["DhcpStats", "DhcpPktSandesh"]
    with pytest.raises(ValueError):
        document([])


def test_values_are_written_as_sandesh_does():
    flow = {"proto": 132, "vrf_id": 0xFFFF, "sip": "a'b\"c&d", "action": "x\x00y\x1bz\ud800"}
    xml = response("KFlowResp", {"flow_list": [flow]})
    assert '<proto type="byte" identifier="7">-124</proto>' in xml
    assert '<vrf_id type="i16" identifier="8">-1</vrf_id>' in xml
    assert '<sip type="string" identifier="3">a&apos;b"c&amp;d</sip>' in xml
    assert '<action type="string" identifier="9">x?y?z?</action>' in xml
    assert "<mirror_id" not in xml and "<ecmp_index" not in xml  # optional, not given
    assert '<table_size type="u32" identifier="5">4294967295</table_size>' in response("Pagination", {"req": {"table_size": -1}})
    nh = response("NhListResp", {"nh_list": [{"type": "arp", "mac": ["2:42:ac:11:0:2"], "valid": None}]})
    assert '<mac type="list" identifier="9"><list type="string" size="1"><element>2:42:ac:11:0:2</element></list></mac>' in nh
    assert "<valid" not in nh  # None is "not given"
    assert '<flood_unknown_unicast type="bool" identifier="46">true</flood_unknown_unicast>' in response(
        "ItfResp", {"itf_list": [{"flood_unknown_unicast": True}]}
    )


def test_programming_errors_fail_loudly():
    with pytest.raises(KeyError, match="metadata_request"):
        response("MetadataResponse", {"metadata_request": 1})
    with pytest.raises(KeyError, match="nam"):
        response("ItfResp", {"itf_list": [{"nam": "x"}]})
    with pytest.raises(KeyError):
        response("ItfSandeshData", {})  # a struct, not a response
    with pytest.raises(KeyError):
        response("more", {})
    with pytest.raises(TypeError):
        response("SandeshTraceTextResponse", {"traces": "abc"})
    with pytest.raises(TypeError):
        response("ItfResp", {"itf_list": ["tap0"]})


# ---------------------------------------------------------------------------------------------------------------
# Pagination


def vrf_rows(n: int) -> list[dict[str, object]]:
    return [{"name": f"vrf{i}", "ucindex": i} for i in range(n)]


def test_encode_key():
    assert encode_key("db.interface.0", 0, 99) == "begin:0,end:99,table:db.interface.0,"
    assert (
        encode_key("db.interface.0", 100, 199, {"type": "", "name": "tap", "mac": "02"}) == "begin:100,end:199,table:db.interface.0,mac:02,name:tap"
    )
    assert encode_key("t", -1, -1, {"table": "other", "begin": "5"}) == "begin:-1,end:-1,table:t,"


def test_decode_key():
    assert decode_key("begin:0,end:99,table:db.interface.0,") == PageKey("db.interface.0", 0, 99, {})
    assert decode_key("begin:100,end:199,table:db.interface.0,mac:02,name:tap") == PageKey("db.interface.0", 100, 199, {"mac": "02", "name": "tap"})
    route_table = "default-domain:default-project:ip-fabric:__default__.uc.route.0"
    assert decode_key(f"begin:-1,end:-1,table:{route_table},,") == PageKey(route_table, -1, -1, {})
    assert decode_key("table:t,end:010,begin:0x10,name:") == PageKey("t", 16, 8, {})  # strtoul(s, 0); reading stops at "name:"
    assert decode_key("begin:12abc,end:x,table:t") == PageKey("t", 12, 0, {})
    assert decode_key("begin:4294967295,end:99999999999999999999999,table:t,begin:7") == PageKey("t", 7, -1, {})
    for bad in ["", ",", "begin:0,end:99", "table:t,begin:0,,end:99", "begin:0,end:99,table:", "x", "::::"]:
        assert decode_key(bad) is None, bad
    for key in [encode_key("db.vrf.0", 200, 249), encode_key("a:b", -1, -1, {"name": "n:1", "vn": "v"})]:
        page = decode_key(key)
        assert page is not None and encode_key(page.table, page.begin, page.end, page.filters) == key


def test_no_rows_gives_an_empty_response_and_pagination():
    out = paged("VrfListResp", "vrf_list", "db.vrf.0", [], 0)
    assert out[0] == (
        '<VrfListResp type="sandesh"><vrf_list type="list" identifier="1"><list type="struct" size="0"></list></vrf_list>'
        '<more type="bool" identifier="0">true</more></VrfListResp>'
    )
    assert out[1] == ITF_PAGINATION.replace("db.interface.0", "db.vrf.0").replace(">5<", ">0<").replace("0-4/5", " 0 / 0")
    assert len(out) == 2
    # Filtered down to nothing in a table of 7.
    assert page_data(parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", [], 7, filters={"name": "zz"}))))["entries"] == " 0 / 0"


def test_a_page_of_exactly_100_rows_sends_an_extra_empty_response():
    root = parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", vrf_rows(100), 100)))
    assert [len(rows) for rows in data_rows(root, "VrfListResp", "vrf_list")] == [100, 0]
    assert [r.findtext("more") for r in root] == ["true", "true", "false"]
    assert page_data(root)["entries"] == "0-99/100" and page_data(root)["next_page"] == ""


def test_250_rows_all_at_once_come_in_100_100_50():
    root = parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", vrf_rows(250), 250, -1, -1)))
    assert [len(rows) for rows in data_rows(root, "VrfListResp", "vrf_list")] == [100, 100, 50]
    assert [r.tag for r in root] == ["VrfListResp"] * 3 + ["Pagination"]
    assert [r.findtext("more") for r in root] == ["true", "true", "true", "false"]
    names = [e.findtext("name") for e in root.iter("VrfSandeshData")]
    assert names == [f"vrf{i}" for i in range(250)]
    page = page_data(root)
    assert (page["entries"], page["prev_page"], page["next_page"], page["table_size"]) == ("0-249/250", "", "", "250")


def test_250_rows_paged_by_following_next_page():
    rows = vrf_rows(250)
    seen, pages = [], []
    key = encode_key("db.vrf.0", 0, 99)
    while key:
        k = decode_key(key)
        assert k is not None
        root = parse(document(paged("VrfListResp", "vrf_list", k.table, rows, 250, k.begin, k.end, k.filters)))
        seen += [e.findtext("name") for e in root.iter("VrfSandeshData")]
        page = page_data(root)
        pages.append((page["entries"], page["prev_page"], page["next_page"]))
        key = page["next_page"]
        assert page["first_page"] == "begin:0,end:99,table:db.vrf.0," and page["all"] == "begin:-1,end:-1,table:db.vrf.0,"
    assert seen == [f"vrf{i}" for i in range(250)]
    assert pages == [
        ("0-99/250", "", "begin:100,end:199,table:db.vrf.0,"),
        ("100-199/250", "begin:0,end:99,table:db.vrf.0,", "begin:200,end:249,table:db.vrf.0,"),
        ("200-249/250", "begin:100,end:199,table:db.vrf.0,", ""),
    ]


def test_page_range_clamping_and_filters_in_keys():
    rows = vrf_rows(30)
    # begin past the table -> 0; end past the table (or before begin) -> begin+99
    page = page_data(parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", rows, 30, 500, 5))))
    assert (page["entries"], page["next_page"]) == ("0-5/30", "begin:6,end:29,table:db.vrf.0,")
    page = page_data(parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", rows, 30, 3, 1000))))
    assert (page["entries"], page["prev_page"], page["next_page"]) == ("3-29/30", "begin:0,end:2,table:db.vrf.0,", "")
    assert page_data(parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", rows, 30, 20, 2))))["entries"] == "20-29/30"
    page = page_data(parse(document(paged("VrfListResp", "vrf_list", "db.vrf.0", rows, 30, 10, 14, {"name": "vrf"}))))
    assert page == {
        "prev_page": "begin:0,end:9,table:db.vrf.0,name:vrf", "next_page": "begin:15,end:19,table:db.vrf.0,name:vrf",
        "first_page": "begin:0,end:4,table:db.vrf.0,name:vrf", "all": "begin:-1,end:-1,table:db.vrf.0,name:vrf",
        "table_size": "30", "entries": "10-14/30",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def test_parse_query_by_name_x_and_position():
    assert parse_query("ItfReq", "name=&type=&uuid=U&vn=V&mac=M&ipv4_address=I") == {
        "name": "", "type": "", "uuid": "U", "vn": "V", "mac": "M", "ipv4_address": "I", "ipv6_address": "",
        "parent_uuid": "", "ip_active": "", "ip6_active": "", "l2_active": "",
    }  # fmt: skip
    assert parse_query("ItfReq", "vn=foo")["vn"] == "foo"
    assert parse_query("ItfReq", "x=tap")["name"] == "tap"
    assert parse_query("ItfReq", "vn=foo&x=tap") == parse_query("ItfReq", "") | {"vn": "foo", "name": "tap"}
    assert parse_query("ItfReq", "vn=foo&zz=tap")["name"] == "tap"  # an unknown key sets the first field
    both = parse_query("ItfReq", "a=tap&b=vport&&c=U")  # no key names a field: by position, empty tokens dropped
    assert (both["name"], both["type"], both["uuid"]) == ("tap", "vport", "U")
    assert parse_query("VrfListReq", "x=a&x=b") == {"name": "a"}  # at most one token per field
    assert parse_query("VrfListReq", "x=a=b") == {"name": "a"}  # the value is the second piece
    assert parse_query("VrfListReq", "x==a") == {"name": "a"}  # empty pieces dropped
    assert parse_query("VrfListReq", "format=html&x=a") == {"name": "a"}
    assert parse_query("VrfListReq", "format=html") == {"name": ""}
    assert parse_query("PageReq", "x=begin:0,end:99,table:db.interface.0,") == {"key": "begin:0,end:99,table:db.interface.0,"}
    assert parse_query("DhcpInfo", "x=1") == {}
    with pytest.raises(KeyError):
        parse_query("ItfResp", "")


def test_parse_query_strings_are_unescaped_and_bounded():
    assert parse_query("SandeshTraceRequest", "x=Oper%20db.interface.0") == {"buf_name": "Oper db.interface.0", "count": 0}
    assert parse_query("VrfListReq", "x=a+b%2Bc%zz")["name"] == "a+b+c%zz"
    assert parse_query("VrfListReq", "x=ab%00cd")["name"] == "ab"  # a C string ends at the NUL
    assert parse_query("VrfListReq", "x=%C3%A9%FF")["name"] == "\u00e9\ufffd"
    assert parse_query("VrfListReq", "x=" + "a" * 5000)["name"] == "a" * 1024


def test_parse_query_integers_like_strtoul_and_bools_as_integers():
    assert parse_query("KFlowReq", "") == {"flow_idx": -1, "show_evicted": False}
    assert parse_query("KFlowReq", "flow_idx=") == {"flow_idx": -1, "show_evicted": False}
    # Leading digits, garbage 0, -N wrapped, read from the raw (not %-decoded) text, ULONG_MAX on overflow, cut to 32 bits.
    for raw, value in [("12x", 12), ("abc", 0), ("-1", -1), ("%20%2D5", 0), ("+7", 7), ("4294967297", 1), ("9" * 23, -1)]:
        assert parse_query("KFlowReq", "x=" + raw)["flow_idx"] == value, raw
    route = parse_query("Inet4UcRouteReq", "vrf_index=2&src_ip=10.0.0.3&prefix_len=-1&stale=true")
    assert route == {"vrf_index": 2, "src_ip": "10.0.0.3", "prefix_len": 65535, "stale": False}
    assert [parse_query("Inet4UcRouteReq", f"stale={v}")["stale"] for v in ["1", "-1", "0", "2x", "false"]] == [True, True, False, True, False]
    assert parse_query("Inet4UcRouteReq", "x=3") == {"vrf_index": 3, "src_ip": "", "prefix_len": 0, "stale": False}
    assert parse_query("SandeshTraceRequest", "buf_name=Flow&count=5") == {"buf_name": "Flow", "count": 5}


def test_strtoul():
    assert [sandesh.strtoul(s) for s in ["", "  42", "\t-0", "-1", "0x10", "007", "1" * 30]] == [0, 42, 0, 2**64 - 1, 0, 7, 2**64 - 1]
    assert [sandesh.strtoul(s, 0) for s in ["0x1f", "0X", "017", "08", "19", "-0x1", "0x" + "f" * 17]] == [31, 0, 15, 0, 19, 2**64 - 1, 2**64 - 1]


# ---------------------------------------------------------------------------------------------------------------
# Static pages

AGENT_PAGE = """<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<agent type="rlist">
<PageReq type="sandesh">
<key type="string">0</key></PageReq>
<NhListReq type="sandesh">
<type type="string">0</type><nh_index type="string">0</nh_index><policy_enabled type="string">0</policy_enabled></NhListReq>
<VrfListReq type="sandesh">
<name type="string">0</name></VrfListReq>
<Inet4UcRouteReq type="sandesh">
<vrf_index type="i32">0</vrf_index><src_ip type="string">0</src_ip><prefix_len type="u16">0</prefix_len><stale type="bool">0</stale></Inet4UcRouteReq>
<Inet6UcRouteReq type="sandesh">
<vrf_index type="i32">0</vrf_index><src_ip type="string">0</src_ip><prefix_len type="u16">0</prefix_len><stale type="bool">0</stale></Inet6UcRouteReq>
<Layer2RouteReq type="sandesh">
<vrf_index type="i32">0</vrf_index><mac type="string">0</mac><stale type="bool">0</stale></Layer2RouteReq>
<ItfReq type="sandesh">
<name type="string">0</name><type type="string">0</type><uuid type="string">0</uuid><vn type="string">0</vn><mac type="string">0</mac>\
<ipv4_address type="string">0</ipv4_address><ipv6_address type="string">0</ipv6_address><parent_uuid type="string">0</parent_uuid>\
<ip_active type="string">0</ip_active><ip6_active type="string">0</ip6_active><l2_active type="string">0</l2_active></ItfReq>
<MplsReq type="sandesh">
<type type="string">0</type><label type="string">0</label></MplsReq>
<LinkLocalServiceInfo type="sandesh">
</LinkLocalServiceInfo>
</agent>
"""

OTHER_PAGES = {
    "services.xml": """<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<services type="rlist">
<DhcpInfo type="sandesh">
</DhcpInfo>
<MetadataInfo type="sandesh">
</MetadataInfo>
<ShowAllInfo type="sandesh">
</ShowAllInfo>
</services>
""",
    "kstate.xml": """<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<kstate type="rlist">
<NextKFlowReq type="sandesh">
<flow_handle type="string">0</flow_handle></NextKFlowReq>
<KFlowReq type="sandesh">
<flow_idx type="i32">0</flow_idx><show_evicted type="bool">0</show_evicted></KFlowReq>
</kstate>
""",
    "pkt.xml": """<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<pkt type="rlist">
<FetchFlowRecord type="sandesh">
<nh type="i32">0</nh><sip type="string">0</sip><dip type="string">0</dip><src_port type="i32">0</src_port><dst_port type="i32">0</dst_port>\
<protocol type="u16">0</protocol></FetchFlowRecord>
</pkt>
""",
    "sandesh_trace.xml": """<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<sandesh_trace type="rlist">
<SandeshTraceRequest type="sandesh">
<buf_name type="string">0</buf_name><count type="i32">0</count></SandeshTraceRequest>
<SandeshTraceBufferListRequest type="sandesh">
</SandeshTraceBufferListRequest>
</sandesh_trace>
""",
}

INDEX = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head><link href="css/style.css" rel="stylesheet" type="text/css"/><title>contrail-vrouter-agent</title></head><body>
<h1>Modules for contrail-vrouter-agent</h1>
<a href="agent.xml">agent.xml</a><br/>
<a href="kstate.xml">kstate.xml</a><br/>
<a href="pkt.xml">pkt.xml</a><br/>
<a href="sandesh_trace.xml">sandesh_trace.xml</a><br/>
<a href="services.xml">services.xml</a><br/>
</body></html>
"""


def test_module_pages_exact():
    assert sandesh.module_page("agent.xml") == AGENT_PAGE.encode()
    for page, text in OTHER_PAGES.items():
        assert sandesh.module_page(page) == text.encode(), page
    for page in schema.MODULES:
        root = parse(sandesh.module_page(page))
        assert root.get("type") == "rlist" and [e.tag for e in root] == list(schema.MODULES[page])
    with pytest.raises(KeyError):
        sandesh.module_page("vrouter.xml")


def test_index_page_and_not_found_exact():
    assert sandesh.index_page() == INDEX.encode()
    assert [a.get("href") for a in parse(sandesh.index_page()).iter("{http://www.w3.org/1999/xhtml}a")] == sorted(schema.MODULES)
    assert sandesh.MODULE_NAME == "contrail-vrouter-agent"
    assert NOT_FOUND == b"<html>\n<title>404 Not Found</title>\n</html>\r\n\x00" and len(NOT_FOUND) == 46


# ---------------------------------------------------------------------------------------------------------------
# The schema


def test_every_type_reference_resolves():
    for name, fields in {**schema.STRUCTS, **schema.REQUESTS}.items():
        ids = [f.id for f in fields]
        assert len(set(ids)) == len(ids) and 0 not in ids, name
        assert len({f.name for f in fields}) == len(fields) and "more" not in {f.name for f in fields}, name
        for f in fields:
            if f.type == "struct":
                assert f.of in schema.STRUCTS and f.of not in schema.RESPONSES, (name, f)
            elif f.type == "list":
                assert f.of in sandesh.BASE_TYPES or (f.of in schema.STRUCTS and f.of not in schema.RESPONSES), (name, f)
            else:
                assert f.type in sandesh.BASE_TYPES and not f.of, (name, f)
    assert schema.RESPONSES <= schema.STRUCTS.keys()
    assert not schema.REQUESTS.keys() & schema.STRUCTS.keys()


def test_schema_declares_what_the_pages_serve():
    assert {page: " ".join(requests) for page, requests in schema.MODULES.items()} == {
        "agent.xml": "PageReq NhListReq VrfListReq Inet4UcRouteReq Inet6UcRouteReq Layer2RouteReq ItfReq MplsReq LinkLocalServiceInfo",
        "services.xml": "DhcpInfo MetadataInfo ShowAllInfo",
        "kstate.xml": "NextKFlowReq KFlowReq",
        "pkt.xml": "FetchFlowRecord",
        "sandesh_trace.xml": "SandeshTraceRequest SandeshTraceBufferListRequest",
    }
    assert sorted(r for page in schema.MODULES.values() for r in page) == sorted(schema.REQUESTS)
    wanted = """ItfResp VrfListResp Inet4UcRouteResp Inet6UcRouteResp Layer2RouteResp NhListResp MplsResp LinkLocalServiceResponse Pagination
        ErrorResp ErrResp DhcpStats DhcpPktSandesh PktStats ArpStats DnsStats IcmpStats MetadataResponse KFlowResp FlowRecordResp FlowErrorResp
        SandeshTraceTextResponse SandeshTraceBufferListResponse""".split()
    assert set(wanted) <= schema.RESPONSES
    itf = schema.STRUCTS["ItfSandeshData"]
    assert len(itf) == 71 and [f.id for f in itf[:10]] == [1, 2, 3, 4, 5, 49, 28, 35, 53, 6]
    assert len(schema.STRUCTS["SandeshFlowData"]) == 75 and schema.STRUCTS["SandeshFlowData"][0] == sandesh.Field("gen_id", 61, "u16")
    assert schema.REQUESTS["KFlowReq"][0].default == -1 and schema.REQUESTS["Inet4UcRouteReq"][0].default == 0
    route_l2 = [(f.name, f.id, f.of, f.link) for f in schema.STRUCTS["RouteL2SandeshData"]]
    assert route_l2 == [("mac", 1, "", ""), ("src_vrf", 2, "", "VrfListReq"), ("path_list", 4, "PathSandeshData", "")]


def test_every_response_with_defaults_only_is_well_formed():
    for name in schema.RESPONSES:
        root = parse(document([response(name, {}, more=True), response(name, {})]))
        assert root.tag == f"__{name}_list" and [child.tag for child in root] == [name, name]


# ---------------------------------------------------------------------------------------------------------------
# Properties

query_text = st.text(alphabet=st.sampled_from("x=&%+-0123456789abcfz:, \x00\u00e9") | st.characters(), max_size=80)


@settings(max_examples=300)
@given(request=st.sampled_from(sorted(schema.REQUESTS)), query=query_text)
def test_parse_query_never_raises(request, query):
    values = parse_query(request, query)
    assert values.keys() == {f.name for f in schema.REQUESTS[request]}
    for f in schema.REQUESTS[request]:
        if f.type == "string":
            assert isinstance(values[f.name], str) and len(values[f.name]) <= sandesh.ARGUMENT_LIMIT
        elif f.type == "bool":
            assert isinstance(values[f.name], bool)
        elif f.type in sandesh.INTEGER_TYPES:
            bits, signed = sandesh.INTEGER_TYPES[f.type]
            low = -(1 << (bits - 1)) if signed else 0
            assert low <= values[f.name] < low + (1 << bits)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("begintable:,-0x19 ") | st.characters(), max_size=80))
def test_decode_key_never_raises(text):
    key = decode_key(text)
    if key is not None:
        assert key.table and -(2**31) <= key.begin < 2**31 and -(2**31) <= key.end < 2**31


def xml_text(value: str) -> str:
    """What an XML parser gives back for a value we wrote: characters XML 1.0 forbids as "?", line ends normalised."""

    def allowed(c: str) -> bool:
        n = ord(c)
        return c in "\t\n\r" or 0x20 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000

    value = "".join(c if allowed(c) else "?" for c in value)
    return value.replace("\r\n", "\n").replace("\r", "\n")


any_text = st.text(st.characters(exclude_categories=()) | st.sampled_from("&<>'\"\r\n\x00\x1f\ud800\udfff\ufffe\uffff]]>"))


@settings(max_examples=300)
@given(any_text, any_text, st.lists(any_text, max_size=3))
def test_any_string_values_give_parsable_xml(message, name, lines):
    root = parse(sandesh.error(message))
    assert (root.findtext("resp") or "") == xml_text(message)
    body = document([response("ItfResp", {"itf_list": [{"name": name, "fixed_ip4_list": lines}]}, more=True), response("Pagination", {})])
    row = parse(body).find("ItfResp/itf_list/list/ItfSandeshData")
    assert row is not None and (row.findtext("name") or "") == xml_text(name)
    assert [e.text or "" for e in row.iterfind("fixed_ip4_list/list/element")] == [xml_text(x) for x in lines]
