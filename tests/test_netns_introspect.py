"""The agent's introspect on port 8085, read as TF operators and their tools read it (needs root).

One node of 3 VMs (DHCP clients) serves the module, in each datapath.  Pages are fetched from
the fabric's namespace, as an operator's browser or script on the management network would, and
parsed as ``ist`` parses them (lxml's ``etree.fromstring`` of the text, then XPath); contrail-scrape
(PyPI) crawls the node; the text CLI reads the same pages; and a VM reaches none of the node's
own services."""

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lxml import etree

from tests.browser import browse, browser_available
from tests.helpers import REQUIRE_GUESTS, SCRAPE_VENV, VROUTER, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.datapaths("nfqueue", "ebpf")]

PI = b'<?xml-stylesheet type="text/xsl" href="/universal_parse.xsl"?>'
IST_ITF = "Snh_ItfReq?name=&type=&uuid=&vn=&mac=&ipv4_address="  # what `ist vr intf` sends
MD = "/openstack/latest/meta_data.json"

_GET = """
import base64, http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 8085, timeout=20)
out = []
for target in json.loads(sys.argv[3]):
    c.request(sys.argv[2], target, headers={"Accept": sys.argv[4]} if sys.argv[4] else {})
    r = c.getresponse()
    out.append({"status": r.status, "headers": dict((k.lower(), v) for k, v in r.getheaders()), "body": base64.b64encode(r.read()).decode()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def node(make_shared_node):
    return make_shared_node(vms=3, dhcp=True)


def fabric(node) -> str:
    return node.layout["namespaces"]["fabric"]


def get_many(node, targets, method="GET", accept=""):
    """(status, headers, body) of each target, over one connection from the fabric's namespace."""
    targets = [t if t.startswith("/") else "/" + t for t in targets]
    r = subprocess.run(["ip", "netns", "exec", fabric(node), sys.executable, "-c", _GET, node.layout["vhost0"]["ip"], method, json.dumps(targets),
                        accept], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [(a["status"], a["headers"], base64.b64decode(a["body"])) for a in json.loads(r.stdout)]


def get(node, target, **kw):
    return get_many(node, [target], **kw)[0]


def xml(node, target):
    """The page as ``ist`` reads it: GET, raise on non-2xx, ``etree.fromstring(response.text)``."""
    status, headers, body = get(node, target)
    assert status == 200 and headers["content-type"] == "text/xml", (target, status, body[:200])
    assert body.startswith(PI) and b"<?xml " not in body  # the stylesheet first, no declaration
    return etree.fromstring(body.decode())


def texts(tree, xpath):
    return [e.text or "" for e in tree.xpath(xpath)]


def all_flows(node):
    """Every KFlowInfo, walking the table 100 entries an answer as a browser follows flow_handle;
    and how many answers it took."""
    tree, flows, answers = xml(node, "Snh_KFlowReq"), [], 0
    while True:
        answers += 1
        flows += tree.xpath("//KFlowInfo")
        assert tree.find("flow_handle").get("link") == "NextKFlowReq"
        handle = tree.findtext("flow_handle")
        if handle == "0" or answers > 100:
            return flows, answers
        tree = xml(node, "Snh_NextKFlowReq?x=" + handle)


def vif_list(node):
    return {v["name"]: v for v in node.cli_json("vif", "--list")}


# -- pages -------------------------------------------------------------------------------------------


@pytest.mark.datapaths("nfqueue")
def test_the_index_lists_the_module_pages_and_each_lists_its_requests(node):
    status, headers, body = get(node, "/")
    assert status == 200
    index = etree.fromstring(body)  # well-formed XHTML, as contrail-scrape's XML parser needs
    links = [a.get("href") for a in index.iter("{http://www.w3.org/1999/xhtml}a")]
    assert links == ["agent.xml", "kstate.xml", "pkt.xml", "sandesh_trace.xml", "services.xml"]
    expected = {"agent.xml": {"ItfReq", "VrfListReq", "Inet4UcRouteReq", "NhListReq", "MplsReq", "LinkLocalServiceInfo", "PageReq"},
                "services.xml": {"DhcpInfo", "MetadataInfo", "ShowAllInfo"}, "kstate.xml": {"KFlowReq", "NextKFlowReq"},
                "pkt.xml": {"FetchFlowRecord"}, "sandesh_trace.xml": {"SandeshTraceRequest", "SandeshTraceBufferListRequest"}}  # fmt: skip
    for module, requests in expected.items():
        page = xml(node, "/" + module)
        assert page.get("type") == "rlist"
        listed = {e.tag for e in page if e.get("type") == "sandesh"}
        assert requests <= listed, module
        for request in listed:  # every listed request answers with no arguments (contrail-scrape calls each so)
            assert get(node, "/Snh_" + request)[0] == 200, request
    for target in ("/nothing", "/Snh_Nothing", "/Snh_ItfResp", "/Snh_ItfReq/"):
        status, headers, body = get(node, target)
        assert status == 404 and body.endswith(b"</html>\r\n\x00") and headers["content-length"] == "46", target


def test_the_interface_list_names_each_vms_metadata_ip_as_ist_reads_it(node):
    tree = xml(node, IST_ITF)
    assert tree.tag == "__ItfResp_list" and tree.get("type") == "slist"
    assert [e.tag for e in tree] == ["ItfResp", "Pagination"]
    rows = tree.xpath("//ItfSandeshData")
    by_name = {r.findtext("name"): r for r in rows}
    vifs = vif_list(node)
    assert set(by_name) == set(vifs)  # vhost0 and the 3 taps
    for vm in node.vms:
        r = by_name[vm["tap"]]
        assert r.findtext("mdata_ip_addr") == vm["metadata_ip"] == vifs[vm["tap"]]["metadata_ip"]
        assert (r.findtext("vm_name"), r.findtext("ip_addr"), r.findtext("mac_addr"), r.findtext("uuid")) == (vm["name"], vm["ip"], vm["mac"],
                                                                                                             vm["port_uuid"])  # fmt: skip
        assert r.findtext("vm_uuid") == vm["instance_uuid"] and int(r.findtext("index")) == vm["vif"]
        assert r.findtext("vn_name") == "default-domain:default-project:%s" % vm["network"]
        assert r.findtext("vrf_name") == "default-domain:default-project:%s:%s" % (vm["network"], vm["network"])
        assert r.find("vrf_name").get("link") == "VrfListReq" and r.findtext("active") == "Active" and r.findtext("type") == "vport"
        assert r.find("fip_list")[0].get("size") == "0"  # every list field has its <list size=..>, as ist's text view reads
    assert by_name["vhost0"].findtext("type") == "vhost"
    assert texts(tree, "//Pagination/req/PageReqData/entries") == ["0-3/4"]
    # filters, by name (TF 2020+) and by position (older Sandesh)
    one = node.vms[1]
    for target in ("Snh_ItfReq?name=%s" % one["tap"], "Snh_ItfReq?x=%s" % one["tap"], "Snh_ItfReq?ipv4_address=%s" % one["ip"],
                   "Snh_ItfReq?name=&type=&uuid=%s" % one["port_uuid"], "Snh_ItfReq?mac=%s" % one["mac"]):  # fmt: skip
        assert texts(xml(node, target), "//ItfSandeshData/name") == [one["tap"]], target


def test_paged_tables_follow_their_page_links(node):
    first = xml(node, "Snh_PageReq?x=begin:0,end:1,table:db.interface.0,")
    assert len(first.xpath("//ItfSandeshData")) == 2
    data = first.xpath("//PageReqData")[0]
    assert data.findtext("next_page") == "begin:2,end:3,table:db.interface.0," and data.findtext("entries") == "0-1/4"
    second = xml(node, "Snh_PageReq?x=" + data.findtext("next_page"))
    both = texts(first, "//ItfSandeshData/index") + texts(second, "//ItfSandeshData/index")
    assert both == texts(xml(node, "Snh_ItfReq"), "//ItfSandeshData/index")
    assert second.xpath("//PageReqData")[0].findtext("prev_page") == "begin:0,end:1,table:db.interface.0,"
    everything = xml(node, "Snh_PageReq?x=begin:-1,end:-1,table:db.interface.0,")  # nlewo's CLI reads it by absolute path
    assert len(everything.xpath("/__ItfResp_list/ItfResp/itf_list/list/ItfSandeshData")) == 4
    for bad in ("Snh_PageReq?x=garbage", "Snh_PageReq?x=begin:0,end:9,table:db.nothing.0,"):
        assert xml(node, bad).tag == "ErrorResp", bad


@pytest.mark.datapaths("nfqueue")
def test_vrfs_routes_next_hops_and_labels(node):
    vrfs = xml(node, "Snh_VrfListReq")
    names = texts(vrfs, "//VrfSandeshData/name")
    net = node.vms[0]["network"]
    vrf_name = "default-domain:default-project:%s:%s" % (net, net)
    assert names == ["default-domain:default-project:ip-fabric:__default__", vrf_name]
    ucindex = vrfs.xpath("//VrfSandeshData[name='%s']/ucindex" % vrf_name)[0]
    assert ucindex.get("link") == "Inet4UcRouteReq"
    routes = xml(node, "Snh_Inet4UcRouteReq?vrf_index=%s&src_ip=&prefix_len=&stale=" % ucindex.text)  # `ist vr route -v N`
    rows = routes.xpath("//RouteUcSandeshData")
    assert sorted(r.findtext("src_ip") for r in rows) == sorted(vm["ip"] for vm in node.vms)
    taps = {vm["ip"]: vm["tap"] for vm in node.vms}
    for r in rows:  # what ist's route view reads, each of which must be there
        path = r.xpath(".//PathSandeshData")[0]
        assert path.xpath("nh/NhSandeshData")[0].findtext("type") == "interface"
        assert path.xpath("nh/NhSandeshData")[0].findtext("itf") == taps[r.findtext("src_ip")]
        assert path.xpath("path_preference_data/PathPreferenceSandeshData/preference")[0].text == "200"
        assert path.findtext("active_label") == path.findtext("label") and path.findtext("peer") == "LocalVmPort"
    exact = xml(node, "Snh_Inet4UcRouteReq?vrf_index=%s&src_ip=%s&prefix_len=32" % (ucindex.text, node.vms[2]["ip"]))
    assert texts(exact, "//RouteUcSandeshData/src_ip") == [node.vms[2]["ip"]]
    assert xml(node, "Snh_Inet4UcRouteReq?x=99").tag == "ErrorResp"
    assert texts(xml(node, "Snh_Inet4UcRouteReq?x=0"), "//RouteUcSandeshData/src_ip") == [node.layout["vhost0"]["ip"]]
    v6 = texts(xml(node, "Snh_Inet6UcRouteReq?x=%s" % ucindex.text), "//RouteUcSandeshData/src_ip")
    assert sorted(v6) == sorted(vm["ipv6"] for vm in node.vms)
    assert sorted(texts(xml(node, "Snh_Layer2RouteReq?x=%s" % ucindex.text), "//RouteL2SandeshData/mac")) == sorted(vm["mac"] for vm in node.vms)
    nhs = xml(node, "Snh_NhListReq?type=interface&policy_enabled=")  # `ist vr nh -t interface`
    assert sorted(texts(nhs, "//NhSandeshData/itf")) == sorted(vm["tap"] for vm in node.vms)
    assert texts(xml(node, "Snh_NhListReq?type=&nh_index=%d" % node.vms[0]["vif"]), "//NhSandeshData/itf") == [node.vms[0]["tap"]]
    assert xml(node, "Snh_NhListReq?nh_index=abc").xpath("//NhSandeshData") == []  # (the real agent crashes here)
    labels = {int(r.findtext("label")): r.xpath("nh/NhSandeshData/itf")[0].text for r in xml(node, "Snh_MplsReq").xpath("//MplsSandeshData")}
    assert sorted(labels.values()) == sorted(vm["tap"] for vm in node.vms)
    mine = [label for label, tap in labels.items() if tap == node.vms[1]["tap"]][0]
    assert texts(xml(node, "Snh_MplsReq?type=&label=%d" % mine), "//MplsSandeshData/label") == [str(mine)]


def test_link_local_metadata_and_dhcp_services(node):
    ll = xml(node, "Snh_LinkLocalServiceInfo")
    md = ll.xpath("//LinkLocalServiceData[linklocal_service_name='metadata']")[0]
    assert (md.findtext("linklocal_service_ip"), md.findtext("linklocal_service_port"), md.findtext("ipfabric_port")) == ("169.254.169.254", "80",
                                                                                                                       "8775")  # fmt: skip
    assert md.xpath("ipfabric_ip/list/element")[0].text == node.layout["nova"]["ip"]
    before = int(xml(node, "Snh_MetadataInfo").findtext("metadata_requests"))
    assert node.metadata(0, MD)[0] == 200 and node.metadata(1, MD)[0] == 200
    info = xml(node, "Snh_MetadataInfo")
    assert info.tag == "MetadataResponse" and int(info.findtext("metadata_requests")) == before + 2
    assert int(info.findtext("metadata_server_port")) == node.layout["metadata_proxy"]["port"]
    dhcp = xml(node, "Snh_DhcpInfo")
    assert dhcp.tag == "__DhcpStats_list" and int(dhcp.findtext("DhcpStats/dhcp_discover")) >= 3 and int(dhcp.findtext("DhcpStats/acks_sent")) >= 3
    show = xml(node, "Snh_ShowAllInfo")  # `ist vr service` (ShowAll)
    kinds = [e.tag for e in show.xpath("//*[self::PktStats or self::DhcpStats or self::ArpStats or self::DnsStats or self::IcmpStats "
                                        "or self::MetadataResponse]")]  # fmt: skip
    assert kinds == ["PktStats", "DhcpStats", "ArpStats", "DnsStats", "IcmpStats", "MetadataResponse"]


def test_flows_are_listed_paged_and_fetched_by_key(node):
    vm = node.vms[0]
    with node.open_connection(0, "169.254.169.254", 80) as (sport, _):
        flows, _ = all_flows(node)
        mine = [f for f in flows if f.findtext("sip") == vm["ip"] and f.findtext("sport") == str(sport)]
        assert len(mine) == 1, [etree.tostring(f)[:200] for f in flows]
        f = mine[0]
        assert (f.findtext("dip"), f.findtext("dport"), f.findtext("proto"), f.findtext("action")) == ("169.254.169.254", "80", "6", "NAT")
        assert "DNAT" in f.findtext("flags") and "RFLOW_VALID" in f.findtext("flags") and "ESTB" in f.findtext("tcp_flags")
        one = xml(node, "Snh_KFlowReq?flow_idx=%s" % f.findtext("index"))
        assert texts(one, "//KFlowInfo/rflow") == [f.findtext("rflow")]
        key = "nh=%s&sip=%s&dip=169.254.169.254&src_port=%d&dst_port=80&protocol=6" % (f.findtext("nhid"), vm["ip"], sport)
        rec = xml(node, "Snh_FetchFlowRecord?" + key)
        assert rec.tag == "FlowRecordResp" and rec.findtext("record/SandeshFlowData/nat") == "enabled"
        assert int(rec.findtext("record/SandeshFlowData/flow_handle")) == int(f.findtext("index"))
    assert xml(node, "Snh_FetchFlowRecord?nh=1&sip=10.9.9.9&dip=10.9.9.8&src_port=1&dst_port=2&protocol=17").tag == "FlowErrorResp"
    assert xml(node, "Snh_FetchFlowRecord?sip=not-an-address").tag == "FlowErrorResp"
    assert xml(node, "Snh_KFlowReq?flow_idx=99999999").tag == "ErrResp"
    # more than 100 entries: a UDP datagram to each of 80 ports of vm2 makes 80 pairs
    node.in_vm(0, sys.executable, "-c", "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
               "for p in range(20000,20080): s.sendto(b'x',(sys.argv[1],p))", node.vms[1]["ip"])  # fmt: skip
    flows, answers = all_flows(node)
    seen = [int(f.findtext("index")) for f in flows]
    assert answers >= 2 and len(seen) >= 160 and seen == sorted(set(seen))
    assert all(len(xml(node, "Snh_KFlowReq").xpath("//KFlowInfo")) <= 100 for _ in range(1))


def test_trace_buffers_say_what_happened_to_a_guest(node):
    names = texts(xml(node, "Snh_SandeshTraceBufferListRequest"), "//trace_buf_name")
    assert names == sorted(names) and {"Config", "Dhcp", "Flow", "Metadata"} <= set(names)
    vm = node.vms[2]
    assert node.metadata(2, "/latest/meta-data/hostname")[0] == 200

    def lines(name: str, *extra: str) -> list[str]:
        return texts(xml(node, "Snh_SandeshTraceRequest?x=%s%s" % (name, "".join(extra))), "//traces/list/element")

    md = lines("Metadata")
    assert any("GET request for VM : %s URL : /latest/meta-data/hostname" % vm["ip"] in t for t in md)
    assert any("Metadata for VM : %s Response : 200" % vm["ip"] in t for t in md)
    assert all(t.split(" ", 1)[0].isdigit() and " MetadataTrace: " in t for t in md)
    assert any("%s plugged" % vm["port_uuid"] in t and vm["tap"] in t for t in lines("Config"))
    dhcp = lines("Dhcp")
    assert any("DHCP discover received on interface : %s" % vm["tap"] in t for t in dhcp)
    assert any("DHCP response sent; message = DHCP Ack; ip = %s" % vm["ip"] in t for t in dhcp)
    assert any("set up on vif0/%d: TCP %s:" % (vm["vif"], vm["ip"]) in t and "169.254.169.254:80" in t and "action NAT" in t for t in lines("Flow"))
    assert len(lines("Dhcp", "&count=1")) == 1
    assert lines("NoSuchBuffer") == []


@pytest.mark.datapaths("nfqueue")
def test_the_cli_prints_pages_as_text(node):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VROUTER), "introspect", *args, "--state-dir", node.state_dir], capture_output=True, text=True, timeout=30)

    r = run("Snh_ItfReq", "--columns", "name,vm_name,mdata_ip_addr")
    assert r.returncode == 0, r.stderr
    for vm in node.vms:
        assert [vm["tap"], vm["name"], vm["metadata_ip"]] in [line.split() for line in r.stdout.splitlines()]
    r = run("/")
    assert r.returncode == 0 and "/agent.xml" in r.stdout and "/services.xml" in r.stdout
    r = run("Snh_MetadataInfo")
    assert r.returncode == 0 and "metadata_requests: " in r.stdout
    r = run("Snh_PageReq?x=begin:0,end:0,table:db.interface.0,", "--columns", "name")  # followed to every row, as ist does
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 + 4
    r = run("Snh_NoSuchRequest")
    assert r.returncode == 1 and "no such page (404)" in r.stderr and "Traceback" not in r.stderr
    for url in ("notaurl", "http://[::1", "http://127.0.0.1:9"):
        r = run("Snh_ItfReq", "--url", url)
        assert r.returncode == 1 and r.stderr.startswith("vrouter introspect: ") and "Traceback" not in r.stderr, (url, r.stderr)
    r = subprocess.run(["ip", "netns", "exec", fabric(node), str(VROUTER), "introspect", "--url", node.layout["introspect"].rstrip("/"),
                        "Snh_SandeshTraceRequest?x=Config"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0 and "ConfigTrace: Port " in r.stdout


@pytest.mark.datapaths("nfqueue")
def test_contrail_scrape_crawls_the_node_and_its_ist_reads_the_interfaces(node, tmp_path):
    """contrail-scrape (PyPI) calls every listed request with no arguments and follows pages;
    contrail-scrape-ist then reads what it saved with ist's XPaths."""
    scrape = SCRAPE_VENV / "bin" / "contrail-scrape"
    if not scrape.exists():
        assert not os.environ.get(REQUIRE_GUESTS), "make test installs contrail-scrape in %s (make test-clients)" % SCRAPE_VENV
        pytest.skip("contrail-scrape is not installed (make test-clients installs it in %s)" % SCRAPE_VENV)
    logs_before = set(Path("/var/log").glob("scrape-*.log"))
    try:
        r = subprocess.run(["ip", "netns", "exec", fabric(node), str(scrape), "--vrouter", node.layout["vhost0"]["ip"]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Please check log file" not in r.stdout + r.stderr, r.stdout[-2000:]
        subprocess.run(["tar", "xzf", "contrail-scrape.tgz"], cwd=tmp_path, check=True)
        saved = list(tmp_path.glob("**/*-vrouter"))
        assert saved, list(tmp_path.rglob("*"))[:20]
        r = subprocess.run([str(SCRAPE_VENV / "bin" / "contrail-scrape-ist"), "vrouter", "intf"], cwd=saved[0], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        for vm in node.vms:
            assert vm["tap"] in r.stdout and vm["metadata_ip"] in r.stdout
    finally:
        for f in set(Path("/var/log").glob("scrape-*.log")) - logs_before:
            f.unlink()


@pytest.mark.datapaths("nfqueue")
@pytest.mark.parametrize("xslt", [True, False], ids=["browser-xslt", "server-html"])
def test_a_browser_shows_the_index_the_interfaces_and_the_flows_and_follows_their_links(node, xslt):
    """Debian's headless Chromium in the fabric's namespace: with its own XSLT (the XML asked for
    with format=xml), and with XSLT switched off (the HTML the agent renders, as every browser
    gets it by its Accept header)."""
    why = browser_available()
    if why:
        assert not os.environ.get(REQUIRE_GUESTS), why
        pytest.skip(why)
    base = node.layout["introspect"]
    fmt = "?format=xml" if xslt else ""
    with node.open_connection(0, "169.254.169.254", 80) as (sport, _):  # a flow to show
        flows, _ = all_flows(node)
        mine = [f.findtext("index") for f in flows if f.findtext("sport") == str(sport) and f.findtext("dip") == "169.254.169.254"]
        pages = browse(fabric(node), [
            {"get": base}, {"click_link": "agent.xml"},
            {"get": base + "Snh_ItfReq" + fmt}, {"click_link": "default-domain:default-project:%s:%s" % ((node.vms[0]["network"],) * 2)},
            {"get": base + "Snh_KFlowReq" + fmt},  # the first 100 entries
            {"get": base + "Snh_NextKFlowReq?x=%s" % mine[0] + fmt.replace("?", "&")},  # those from the metadata flow on
        ], xslt=xslt)  # fmt: skip
    index, module, itf, vrf, first, flow = pages
    assert "Modules for contrail-vrouter-agent" in index["text"] and [t for t, _ in index["links"]][:5] == [
        "agent.xml", "kstate.xml", "pkt.xml", "sandesh_trace.xml", "services.xml"]  # fmt: skip
    assert module["url"] == base + "agent.xml" and "ItfReq" in module["text"] and "Send" in module["text"]
    assert itf["rows"] >= 1 + 4  # a header and vhost0 and the 3 VMs
    for vm in node.vms:
        assert vm["name"] in itf["text"] and vm["metadata_ip"] in itf["text"] and vm["tap"] in itf["text"]
    assert "Snh_VrfListReq?x=" in vrf["url"] and "ucindex" in vrf["text"] and "ip-fabric" not in vrf["text"]  # that VRF alone
    assert first["rows"] >= 2 and "flow_handle" in first["text"]
    assert flow["rows"] >= 2 and "169.254.169.254" in flow["text"] and "NAT" in flow["text"] and "%d" % sport in flow["text"]


# -- who can reach it, and bad input -------------------------------------------------------------------


def test_a_vm_reaches_none_of_the_nodes_own_services(node):
    vhost = node.layout["vhost0"]
    targets = [(vhost["ip"], 8085), (vhost["ip"], node.layout["metadata_proxy"]["port"]), ("169.254.169.254", 8085),
               ("169.254.169.254", node.layout["metadata_proxy"]["port"]), (node.vms[0]["gateway"], 8085), (node.layout["nova"]["ip"], 8775),
               (vhost["ip6"], 8085), (node.layout["metadata_proxy"]["ip6"], node.layout["metadata_proxy"]["port"])]  # fmt: skip
    # all at once, each with 2 s to answer: a connection, then an HTTP request if one is made
    probe = """
import json, socket, sys, threading
out = {}
def try_one(ip, port):
    try:
        s = socket.create_connection((ip, port), timeout=2)
        s.sendall(b"GET /metrics HTTP/1.1\\r\\n\\r\\n")
        out["%s:%d" % (ip, port)] = s.recv(100).decode("latin-1")
    except OSError as e:
        out["%s:%d" % (ip, port)] = None
threads = [threading.Thread(target=try_one, args=(ip, int(port))) for ip, port in json.loads(sys.argv[1])]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""
    r = node.in_vm(0, sys.executable, "-c", probe, json.dumps(targets + [("169.254.169.254", 80)]), timeout=30)
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    assert (answers.pop("169.254.169.254:80") or "").startswith("HTTP/1.1 ")  # the probe does see what answers
    assert len(answers) == len(targets) and all(a is None for a in answers.values()), answers
    assert node.metadata(0, MD)[0] == 200  # while the metadata service is served


@pytest.mark.datapaths("nfqueue")
def test_bad_requests_get_an_answer_or_a_clear_error(node):
    long_arg = "a" * 4000
    answers = get_many(node, ["Snh_ItfReq?name=" + long_arg, "Snh_ItfReq?%%%%=&&&==&x", "Snh_KFlowReq?flow_idx=-7", "Snh_NextKFlowReq?x=abc",
                              "Snh_SandeshTraceRequest?x=Flow&count=-1", "Snh_FetchFlowRecord?nh=x&sip=1.2.3.4&dip=::1",
                              "Snh_Inet4UcRouteReq?vrf_index=1&prefix_len=99999", "/Snh_ItfReq?format=weird"])  # fmt: skip
    for status, _, body in answers:
        assert status == 200 and body.startswith(PI) and etree.fromstring(body.decode()) is not None
    assert [get(node, "/", method=m)[0] for m in ("HEAD", "POST")] == [200, 200]
    raw = """
import socket, sys
def ask(data):
    s = socket.create_connection((sys.argv[1], 8085), timeout=10)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out
get = b"GET /Snh_MetadataInfo HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
print(repr(ask(b"GARBAGE\\r\\n\\r\\n")[:40]))
print(repr(ask(b"GET /Snh_ItfReq?x=" + b"a" * 10000 + b" HTTP/1.1\\r\\n\\r\\n")[:40]))
print(repr(ask(b"\\x00\\xff" * 100 + b"\\r\\n\\r\\n")[:40]))
print(ask(b"POST /Snh_MetadataInfo HTTP/1.1\\r\\nContent-Length: 24\\r\\n\\r\\nname=tap&x=GET /Snh_ItfR" + get).count(b"HTTP/1.1 200 OK"))
print(repr(ask(b"GET /Snh_MetadataInfo HTTP/1.1\\nHost: x\\n\\n")[:15]))
print(repr(ask(b"POST / HTTP/1.1\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\n")[:24]))
"""
    r = subprocess.run(["ip", "netns", "exec", fabric(node), sys.executable, "-c", raw, node.layout["vhost0"]["ip"]], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    first, over_long, binary, body_then_get, bare_lf, chunked = r.stdout.splitlines()
    assert "400 Bad Request" in first and "431 Request Header Fields" in over_long and "400 Bad Request" in binary
    assert body_then_get == "2"  # the POST's body read and dropped, the GET after it answered
    assert bare_lf == "b'HTTP/1.1 200 OK'" and "411 Length Requ" in chunked
    assert get(node, "Snh_MetadataInfo")[0] == 200  # and it still serves


@pytest.mark.datapaths("nfqueue")
def test_clients_that_do_not_read_are_dropped_and_the_port_stays_served(node):
    """As many connections as the server takes ask for the whole interface table and never read
    the answer: one more is told 503, and once the stuck ones are dropped (10 s without reading)
    the metrics and the pages answer again."""
    hog = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect((sys.argv[1], 8085))
    s.sendall(b"GET /Snh_PageReq?x=begin:-1,end:-1,table:db.interface.0, HTTP/1.1\\r\\n\\r\\n" * 20)
    socks.append(s)
print("holding", flush=True)
sys.stdin.read()
"""
    p = subprocess.Popen(["ip", "netns", "exec", fabric(node), sys.executable, "-c", hog, node.layout["vhost0"]["ip"], "64"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "holding"
        wait_until(lambda: get(node, "/metrics")[0] == 503, 10, "a connection past the limit to be told 503")
        wait_until(lambda: get(node, "/metrics")[0] == 200, 30, "the stuck clients to be dropped and /metrics served again")
        assert get(node, "Snh_MetadataInfo")[0] == 200
    finally:
        p.stdin.close()
        p.wait(10)


@pytest.mark.datapaths("nfqueue")
def test_a_flood_of_the_largest_page_leaves_the_vms_served(node):
    """Clients fetch every interface and the flow walk in a loop while each VM reads its
    metadata: every VM read succeeds, and the introspect kept answering."""
    stop = threading.Event()
    fetched, failed = [0], []
    flood = """
import http.client, sys, time
end = time.time() + float(sys.argv[2])
n = 0
c = http.client.HTTPConnection(sys.argv[1], 8085, timeout=20)
while time.time() < end:
    for t in ("/Snh_PageReq?x=begin:-1,end:-1,table:db.interface.0,", "/Snh_KFlowReq", "/Snh_ShowAllInfo"):
        c.request("GET", t, headers={"Accept": "text/html" if n % 2 else "*/*"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        n += 1
print(n)
"""
    procs = [subprocess.Popen(["ip", "netns", "exec", fabric(node), sys.executable, "-c", flood, node.layout["vhost0"]["ip"], "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip

    def metadata_reads() -> None:
        while not stop.is_set():
            for i in range(3):
                status, _ = node.metadata(i, MD)
                fetched[0] += 1
                if status != 200:
                    failed.append((i, status))

    reader = threading.Thread(target=metadata_reads)
    reader.start()
    try:
        counts = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-1000:]
            counts.append(int(out))
    finally:
        stop.set()
        reader.join(60)
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert failed == [] and fetched[0] >= 6
    assert sum(counts) >= 40, counts
    wait_until(lambda: get(node, "Snh_MetadataInfo")[0] == 200, 10, "the introspect to answer after the flood")
