"""The introspect's pure parts, no root: the trace buffers and their lines, the text the CLI prints
of a page, and the HTTP layer's handling of ``format=``."""

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.core.services import LinkLocalService
from flows.layout import Action, DropReason, make_key
from infra.trace import TraceBuffer
from vrouter.agent.state import NetworkChanged, Origin, PortChanged, ServicesChanged
from vrouter.introspect import sandesh
from vrouter.introspect.schema import MODULES
from vrouter.introspect.server import split_query
from vrouter.introspect.traces import ConfigTrace, flow_lines, metadata_lines
from vrouter.messages.proxy import JournalEntry
from vrouter.model import Network, Port
from vrouter.tools.introspect import NotSandesh, next_page_key, parse, to_data, to_text


def test_a_trace_buffer_keeps_its_last_entries_oldest_first():
    b = TraceBuffer("Dhcp", 3, "DhcpTrace")
    for i in range(5):
        b.add("event %d" % i)
    lines = b.lines()
    assert len(b) == 3 and b.size == 3
    assert [line.split(" ", 1)[1] for line in lines] == ["DhcpTrace: event 2", "DhcpTrace: event 3", "DhcpTrace: event 4"]
    stamps = [int(line.split(" ", 1)[0]) for line in lines]
    assert stamps == sorted(stamps) and stamps[0] > 1_700_000_000_000_000  # µs since the epoch


def test_flow_lines_say_what_was_set_up_and_what_was_refused_in_time_order():
    src, dst = ipaddress.IPv4Address("10.1.1.3").packed, ipaddress.IPv4Address("169.254.169.254").packed
    key = make_key(3, src, dst, 6, 40000, 80)
    key6 = make_key(4, ipaddress.IPv6Address("fd00::3").packed, ipaddress.IPv6Address("fd00::4").packed, 17, 5, 6)
    entries = [(20, 4, key6, -1, -1, int(DropReason.FLOW_LIMIT)), (10, 3, key, 412, int(Action.NAT), 0)]  # two workers', unsorted
    lines = flow_lines(entries)
    assert lines == [
        "10 FlowTrace: set up on vif0/3: TCP 10.1.1.3:40000 -> 169.254.169.254:80 nh 3; index 412 action NAT",
        "20 FlowTrace: refused on vif0/4: UDP fd00::3:5 -> fd00::4:6 nh 4; drop reason Flow Limit",
    ]
    assert flow_lines(entries, count=1) == lines[:1]  # the first, as Sandesh reads a buffer


def _entry(**kw):
    base = dict(seq=1, time=1.5, vif=3, instance="i", vm_ip="10.1.1.3", method="GET", path="/latest", status=200, bytes_in=1, bytes_out=2,
                nova_ms=1.0, total_ms=2.0, reason="", fault=0)  # fmt: skip
    return JournalEntry(**(base | kw))


def test_metadata_lines_are_the_journals_requests_and_answers_in_the_agents_words():
    lines = metadata_lines([_entry(), _entry(status=0, reason="Nova did not answer"), _entry(method="LAB", path="/reboot", status=0)])
    assert lines == [
        "1500000 MetadataTrace: GET request for VM : 10.1.1.3 URL : /latest",
        "1502000 MetadataTrace: Metadata for VM : 10.1.1.3 Response : 200",
        "1500000 MetadataTrace: GET request for VM : 10.1.1.3 URL : /latest",
        "1502000 MetadataTrace: Metadata for VM : 10.1.1.3 Error : Nova did not answer",
        "1500000 MetadataTrace: reboot for VM : 10.1.1.3 (lab mark)",
    ]


def test_the_config_trace_writes_each_change_of_the_state():
    trace = ConfigTrace()
    port = Port("p1", "i1", "n1", "proj", "10.1.1.3", "02:00:0a:01:01:03", "tapp1", "vm1", vif=3, vrf=1)
    net = Network("n1", "net1", "10.1.1.0/24", "10.1.1.1", "10.1.1.2")

    async def changes() -> None:
        await trace.changed(NetworkChanged(net, None, Origin.LOCAL))
        await trace.changed(PortChanged(port, None, Origin.CLUSTER))
        await trace.changed(PortChanged(None, port, Origin.LOCAL))
        await trace.changed(ServicesChanged({"metadata": LinkLocalService("metadata", "169.254.169.254", 80)}, {}, Origin.CACHE))

    asyncio.run(changes())
    texts = [line.split(": ", 1)[1] for line in trace.buffer.lines()]
    assert texts[0] == "Network net1 n1 added (local): subnet 10.1.1.0/24"
    assert texts[1].startswith("Port p1 plugged (cluster): tap tapp1 vif0/3 VRF 1 IP 10.1.1.3 MAC 02:00:0a:01:01:03 VM vm1 (i1)")
    assert texts[2].startswith("Port p1 unplugged (local)")
    assert texts[3] == "Link-local services set (cache): metadata"


def test_split_query_takes_format_out_and_keeps_the_rest_in_order():
    assert split_query("x=tap&format=html&y=2") == ("x=tap&y=2", "html")
    assert split_query("name=&format=XML") == ("name=", "xml")
    assert split_query("x=format%3Dhtml") == ("x=format%3Dhtml", None)
    assert split_query("") == ("", None)


@given(st.lists(st.text(alphabet="=&%fmortx1", max_size=12), max_size=8))
def test_split_query_keeps_every_other_argument_in_order(tokens):
    kept, fmt = split_query("&".join(tokens))
    assert kept.split("&") == [t for t in "&".join(tokens).split("&") if t.split("=", 1)[0] != "format"] or kept == ""
    assert (fmt is not None) == any(t.split("=", 1)[0] == "format" for t in "&".join(tokens).split("&"))


# -- the CLI's text --------------------------------------------------------------------------------------


def _itf(rows: int, begin: int = 0, end: int = 99) -> bytes:
    data = [{"index": i, "name": "tap%d" % i, "vm_name": "vm%d" % i, "mdata_ip_addr": "169.254.0.%d" % i, "fixed_ip4_list": ["10.0.0.%d" % i]}
            for i in range(rows)]  # fmt: skip
    return sandesh.document(sandesh.paged("ItfResp", "itf_list", "db.interface.0", data, rows, begin, end))


def test_the_text_of_an_answer_its_table_and_its_pages():
    root = parse(_itf(3))
    text = to_text(root)
    assert "ItfResp\n  itf_list: (3)\n    ItfSandeshData\n      index: 0\n      name: tap0\n" in text
    assert "        - 10.0.0.1\n" in text and "Pagination\n" in text
    table = to_text(root, ["name", "vm_name", "mdata_ip_addr"]).splitlines()
    assert table[0].split() == ["name", "vm_name", "mdata_ip_addr"] and table[1:] == [
        "tap0  vm0      169.254.0.0", "tap1  vm1      169.254.0.1", "tap2  vm2      169.254.0.2"]  # fmt: skip
    assert next_page_key(root) == ""
    assert next_page_key(parse(_itf(5, 0, 1))) == "begin:-1,end:-1,table:db.interface.0,"


def test_the_text_of_the_index_and_of_a_module_page():
    assert to_text(parse(sandesh.index_page())) == "Modules:\n" + "".join("  /%s\n" % m for m in sorted(MODULES))
    text = to_text(parse(sandesh.module_page("kstate.xml")))
    assert text.splitlines()[0].startswith("kstate requests") and "  KFlowReq(flow_idx: i32, show_evicted: bool)" in text


def test_a_page_that_is_not_xml_is_a_clear_error():
    with pytest.raises(NotSandesh, match="not an XML page"):
        parse(b"<html>\n<title>404 Not Found</title>\n</html>\r\n\x00")


def test_an_answer_as_data_for_json():
    data = to_data(parse(_itf(2)))
    assert [list(d) for d in data] == [["ItfResp"], ["Pagination"]]
    rows = data[0]["ItfResp"]["itf_list"]
    assert [(r["index"], r["name"], r["fixed_ip4_list"], r["drop_new_flows"]) for r in rows] == [
        (0, "tap0", ["10.0.0.0"], False), (1, "tap1", ["10.0.0.1"], False)]  # fmt: skip
    assert data[1]["Pagination"]["req"]["entries"] == "0-1/2" and data[1]["Pagination"]["req"]["table_size"] == 2
    assert to_data(parse(sandesh.module_page("pkt.xml"))) == {"FetchFlowRecord": ["nh", "sip", "dip", "src_port", "dst_port", "protocol"]}
