"""The research notes' sample pages of the real agent's introspect (issue 26: the Sandesh XML of
/Snh_ItfReq, /Snh_MetadataInfo, /Snh_KFlowReq, traces, module pages), re-typed, for the tests of
the introspect; and variants of them (compact as the agent sends them, more interfaces)."""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

ITF_PAGE = b"""\
<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>
<__ItfResp_list type="slist">
  <ItfResp type="sandesh">
    <itf_list type="list" identifier="1">
      <list type="struct" size="1">
        <ItfSandeshData>
          <index type="i32" identifier="1">3</index>
          <name type="string" identifier="2">tap1b2c3d4e-5f</name>
          <uuid type="string" identifier="3">1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d</uuid>
          <vrf_name type="string" identifier="4" link="VrfListReq">default-domain:admin:vn1:vn1</vrf_name>
          <active type="string" identifier="5">Active</active>
          <ipv4_active type="string" identifier="49">Active</ipv4_active>
          <l2_active type="string" identifier="28">L2 Active</l2_active>
          <ip6_active type="string" identifier="35">Ipv6 Inactive &lt; no-ipv6-addr  &gt;</ip6_active>
          <health_check_active type="string" identifier="53">Active</health_check_active>
          <dhcp_service type="string" identifier="6">Enable</dhcp_service>
          <dhcp_service_v6 type="string" identifier="72">Enable</dhcp_service_v6>
          <dns_service type="string" identifier="7">Enable</dns_service>
          <type type="string" identifier="8">vport</type>
          <label type="i32" identifier="9">17</label>
          <l2_label type="i32" identifier="25">18</l2_label>
          <vxlan_id type="i32" identifier="26">0</vxlan_id>
          <vn_name type="string" identifier="10" link="VnListReq">default-domain:admin:vn1</vn_name>
          <vm_uuid type="string" identifier="11" link="VmListReq">9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d</vm_uuid>
          <vm_name type="string" identifier="12">vm1</vm_name>
          <ip_addr type="string" identifier="13">10.0.0.3</ip_addr>
          <mac_addr type="string" identifier="14">02:1b:2c:3d:4e:5f</mac_addr>
          <policy type="string" identifier="15">Enable</policy>
          <fip_list type="list" identifier="16">
            <list type="struct" size="0"/>
          </fip_list>
          <mdata_ip_addr type="string" identifier="17">169.254.0.3</mdata_ip_addr>
          <service_vlan_list type="list" identifier="18">
            <list type="struct" size="0"/>
          </service_vlan_list>
          <os_ifindex type="i32" identifier="19">12</os_ifindex>
          <fabric_port type="string" identifier="20">NotFabricPort</fabric_port>
          <alloc_linklocal_ip type="string" identifier="21">LL-Enable</alloc_linklocal_ip>
          <analyzer_name type="string" identifier="22"/>
          <config_name type="string" identifier="23">default-domain:admin:1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d</config_name>
          <sg_uuid_list type="list" identifier="24">
            <list type="struct" size="1">
              <VmIntfSgUuid>
                <sg_uuid type="string" identifier="1" link="SgListReq">5c6d7e8f-0a1b-4c2d-8e3f-4a5b6c7d8e9f</sg_uuid>
              </VmIntfSgUuid>
            </list>
          </sg_uuid_list>
          <static_route_list type="list" identifier="27">
            <list type="struct" size="0"/>
          </static_route_list>
          <vm_project_uuid type="string" identifier="30">7d6c5b4a-3f2e-4d1c-9b0a-8f7e6d5c4b3a</vm_project_uuid>
          <admin_state type="string" identifier="31">Enabled</admin_state>
          <flow_key_idx type="i32" identifier="32">25</flow_key_idx>
          <allowed_address_pair_list type="list" identifier="33">
            <list type="struct" size="0"/>
          </allowed_address_pair_list>
          <ip6_addr type="string" identifier="34">::</ip6_addr>
          <local_preference type="i32" identifier="36">0</local_preference>
          <tx_vlan_id type="i16" identifier="37">-1</tx_vlan_id>
          <rx_vlan_id type="i16" identifier="38">-1</rx_vlan_id>
          <parent_interface type="string" identifier="39"/>
          <subnet type="string" identifier="40">--NA--</subnet>
          <sub_type type="string" identifier="41">Tap</sub_type>
          <vrf_assign_acl_uuid type="string" identifier="42" link="AclReq">--NA--</vrf_assign_acl_uuid>
          <vmi_type type="string" identifier="43">Virtual Machine</vmi_type>
          <transport type="string" identifier="44">Ethernet</transport>
          <logical_interface_uuid type="string" identifier="45">00000000-0000-0000-0000-000000000000</logical_interface_uuid>
          <flood_unknown_unicast type="bool" identifier="46">false</flood_unknown_unicast>
          <physical_device type="string" identifier="47"/>
          <physical_interface type="string" identifier="48"/>
          <fixed_ip4_list type="list" identifier="50">
            <list type="string" size="1">
              <element>10.0.0.3</element>
            </list>
          </fixed_ip4_list>
          <fixed_ip6_list type="list" identifier="51">
            <list type="string" size="0"/>
          </fixed_ip6_list>
          <fat_flow_list type="list" identifier="52">
            <list type="string" size="0"/>
          </fat_flow_list>
          <metadata_ip_active type="string" identifier="54">Active</metadata_ip_active>
          <service_health_check_ip type="string" identifier="55">0.0.0.0</service_health_check_ip>
          <alias_ip_list type="list" identifier="57">
            <list type="struct" size="0"/>
          </alias_ip_list>
          <drop_new_flows type="bool" identifier="58">false</drop_new_flows>
          <bridge_domain_list type="list" identifier="59">
            <list type="struct" size="0"/>
          </bridge_domain_list>
          <vmi_tag_list type="list" identifier="60">
            <list type="struct" size="0"/>
          </vmi_tag_list>
          <policy_set_acl_list type="list" identifier="61">
            <list type="string" size="0"/>
          </policy_set_acl_list>
          <slo_list type="list" identifier="62">
            <list type="struct" size="0"/>
          </slo_list>
          <vhostuser_mode type="byte" identifier="63">0</vhostuser_mode>
          <si_other_end_vmi type="string" identifier="64">00000000-0000-0000-0000-000000000000</si_other_end_vmi>
          <cfg_igmp_enable type="bool" identifier="65">false</cfg_igmp_enable>
          <igmp_enabled type="bool" identifier="66">false</igmp_enabled>
          <max_flows type="i32" identifier="67">0</max_flows>
          <policy_set_fwaas_list type="list" identifier="68">
            <list type="string" size="0"/>
          </policy_set_fwaas_list>
          <bond_interface_list type="list" identifier="69">
            <list type="struct" size="0"/>
          </bond_interface_list>
          <mac_ip_learning_enable type="bool" identifier="70">false</mac_ip_learning_enable>
          <mac_ip_list type="list" identifier="71">
            <list type="struct" size="0"/>
          </mac_ip_list>
        </ItfSandeshData>
      </list>
    </itf_list>
    <more type="bool" identifier="0">true</more>
  </ItfResp>
  <Pagination type="sandesh">
    <req type="struct" identifier="1">
      <PageReqData>
        <prev_page type="string" identifier="1" link="PageReq"/>
        <next_page type="string" identifier="2" link="PageReq"/>
        <first_page type="string" identifier="3" link="PageReq">begin:0,end:99,table:db.interface.0,</first_page>
        <all type="string" identifier="4" link="PageReq">begin:-1,end:-1,table:db.interface.0,</all>
        <table_size type="u32" identifier="5">5</table_size>
        <entries type="string" identifier="6">0-4/5</entries>
      </PageReqData>
    </req>
    <more type="bool" identifier="0">false</more>
  </Pagination>
</__ItfResp_list>
"""

METADATA = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?><MetadataResponse type="sandesh">'
    b'<metadata_server_port type="i32" identifier="1">8775</metadata_server_port>'
    b'<metadata_requests type="i32" identifier="2">12</metadata_requests>'
    b'<metadata_responses type="i32" identifier="3">12</metadata_responses>'
    b'<metadata_proxy_sessions type="i32" identifier="4">12</metadata_proxy_sessions>'
    b'<metadata_internal_errors type="i32" identifier="5">0</metadata_internal_errors>'
    b'<more type="bool" identifier="0">false</more></MetadataResponse>'
)

KFLOW = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?><KFlowResp type="sandesh">'
    b'<flow_list type="list" identifier="1"><list type="struct" size="1"><KFlowInfo>'
    b'<index type="i32" identifier="1">412</index><rflow type="i32" identifier="2">388</rflow>'
    b'<sip type="string" identifier="3">10.0.0.3</sip><sport type="i32" identifier="4">43211</sport>'
    b'<dip type="string" identifier="5">169.254.169.254</dip><dport type="i32" identifier="6">80</dport>'
    b'<proto type="byte" identifier="7">6</proto><vrf_id type="i16" identifier="8">2</vrf_id>'
    b'<action type="string" identifier="9">NAT</action>'
    b'<flags type="string" identifier="10"> ACTIVE | DNAT | RFLOW_VALID </flags>'
    b'<d_vrf_id type="i16" identifier="11">0</d_vrf_id><bytes type="i32" identifier="12">1266</bytes>'
    b'<pkts type="i32" identifier="13">9</pkts><insight type="i32" identifier="14">0</insight>'
    b'<nhid type="i32" identifier="18">29</nhid><underlay_udp_sport type="u16" identifier="19">0</underlay_udp_sport>'
    b'<tcp_flags type="string" identifier="20"> SYN | SYN_R | ESTB | ESTB_R </tcp_flags>'
    b'<ttl type="u16" identifier="22">0</ttl><qos_id type="i16" identifier="23">-1</qos_id>'
    b'<gen_id type="i16" identifier="24">3</gen_id><tcp_seq type="u16" identifier="25">0</tcp_seq>'
    b'<oflow_bytes type="u16" identifier="26">0</oflow_bytes><oflow_packets type="u16" identifier="27">0</oflow_packets>'
    b'<underlay_gw_index type="i16" identifier="28">-1</underlay_gw_index></KFlowInfo></list></flow_list>'
    b'<flow_handle type="string" identifier="2" link="NextKFlowReq">0</flow_handle>'
    b'<more type="bool" identifier="0">false</more></KFlowResp>'
)

TRACE = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?><SandeshTraceTextResponse type="sandesh">'
    b'<traces type="list" identifier="1"><list type="string" size="2">'
    b"<element>1765101600123456 MetadataTrace: GET request for VM : 10.0.0.3 URL : /latest/meta-data/</element>"
    b"<element>1765101600125011 MetadataTrace: Metadata for VM : 10.0.0.3 Response : HTTP/1.1 200 OK ...</element></list>"
    b'</traces><more type="bool" identifier="0">false</more></SandeshTraceTextResponse>'
)

ERROR = (
    b'<ErrorResp type="sandesh"><resp type="string" identifier="1">   Invalid Input !!!   </resp>'
    b'<more type="bool" identifier="0">false</more></ErrorResp>'
)

AGENT_XML = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>\n'
    b'<agent type="rlist">\n'
    b'<PageReq type="sandesh">\n'
    b'<key type="string">0</key></PageReq>\n'
    b'<NhListReq type="sandesh">\n'
    b'<type type="string">0</type><nh_index type="string">0</nh_index><policy_enabled type="string">0</policy_enabled>'
    b"</NhListReq>\n"
    b'<VrfListReq type="sandesh">\n'
    b'<name type="string">0</name></VrfListReq>\n'
    b'<Inet4UcRouteReq type="sandesh">\n'
    b'<vrf_index type="i32">0</vrf_index><src_ip type="string">0</src_ip><prefix_len type="u16">0</prefix_len>'
    b'<stale type="bool">0</stale></Inet4UcRouteReq>\n'
    b'<ItfReq type="sandesh">\n'
    b'<name type="string">0</name><type type="string">0</type><uuid type="string">0</uuid><vn type="string">0</vn>'
    b'<mac type="string">0</mac><ipv4_address type="string">0</ipv4_address><ipv6_address type="string">0</ipv6_address>'
    b'<parent_uuid type="string">0</parent_uuid><ip_active type="string">0</ip_active><ip6_active type="string">0</ip6_active>'
    b'<l2_active type="string">0</l2_active></ItfReq>\n'
    b'<MplsReq type="sandesh">\n'
    b'<type type="string">0</type><label type="string">0</label></MplsReq>\n'
    b'<LinkLocalServiceInfo type="sandesh">\n'
    b"</LinkLocalServiceInfo>\n"
    b"</agent>\n"
)

KSTATE_XML = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>\n'
    b'<kstate type="rlist">\n'
    b'<NextKFlowReq type="sandesh">\n'
    b'<flow_handle type="string">0</flow_handle></NextKFlowReq>\n'
    b'<KFlowReq type="sandesh">\n'
    b'<flow_idx type="i32">0</flow_idx><show_evicted type="bool">0</show_evicted></KFlowReq>\n'
    b"</kstate>\n"
)

BUFFERS = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?><SandeshTraceBufferListResponse type="sandesh">'
    b'<trace_buffer_list type="list" identifier="1"><list type="struct" size="2">'
    b'<SandeshTraceBufInfo><trace_buf_name type="string" identifier="1" link="SandeshTraceRequest">Metadata</trace_buf_name></SandeshTraceBufInfo>'
    b'<SandeshTraceBufInfo><trace_buf_name type="string" identifier="1" link="SandeshTraceRequest">Oper db.interface.0</trace_buf_name>'
    b'</SandeshTraceBufInfo></list></trace_buffer_list><more type="bool" identifier="0">false</more></SandeshTraceBufferListResponse>'
)

# An answer to the interface table's links to a VRF (a test's server puts the name asked for in place of @X@)
VRF_PAGE = (
    b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?><__VrfListResp_list type="slist"><VrfListResp type="sandesh">'
    b'<vrf_list type="list" identifier="1"><list type="struct" size="1"><VrfSandeshData><name type="string" identifier="1">@X@</name>'
    b'<ucindex type="i32" identifier="2" link="Inet4UcRouteReq">2</ucindex></VrfSandeshData></list></vrf_list>'
    b'<more type="bool" identifier="0">false</more></VrfListResp></__VrfListResp_list>'
)

SAFE = "/:,@"  # what the stylesheet leaves as it is in a link's value, besides letters, digits and -_.~
# A VRF name with what Sandesh's own stylesheet puts raw in its links: &, #, +, % and a space
VRF_ODD = "default-domain:admin:vn 2&b#c+d%e:vn2"
INTERFACES = (("vm1", "default-domain:admin:vn1:vn1"), ("vm2-web", VRF_ODD), ("vm3-db", "default-domain:admin:vn3:vn3"))
# the sample's one interface
ITF_DATA = ITF_PAGE[ITF_PAGE.index(b"<ItfSandeshData>") : ITF_PAGE.index(b"</ItfSandeshData>") + len(b"</ItfSandeshData>")]


def compact(xml: bytes) -> bytes:
    """A pretty-printed sample as the agent sends it: no whitespace between elements."""
    return re.sub(rb">\s+<", b"><", xml)


def itf_page(interfaces: tuple[tuple[str, str], ...] = INTERFACES) -> bytes:
    """The ItfResp sample with these (VM name, VRF name) interfaces instead of its one."""
    items = b"".join(
        ITF_DATA.replace(b">3</index>", b">%d</index>" % (3 + i))
        .replace(b">vm1</vm_name>", b">%s</vm_name>" % vm.encode())
        .replace(b">default-domain:admin:vn1:vn1</vrf_name>", b">%s</vrf_name>" % escape(vrf).encode())
        for i, (vm, vrf) in enumerate(interfaces)
    )
    page = ITF_PAGE.replace(ITF_DATA, items)
    return re.sub(rb'size="1"(\s*<ItfSandeshData>)', b'size="%d"\\1' % len(interfaces), page)
