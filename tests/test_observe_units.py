"""The pure parts of the tools that watch a node: vifdump's copies in the dataplane, its records
and their lines, the instances file and its edits, the metrics' set-up rate, and agent.conf's
keys for them (no root)."""

import json
import logging
import os

import dpkt
import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from dataplane.core.capture import FRAME, OTHER_SIDE, RX, TX, Capture, Sink
from dataplane.core.capture import IP as KIND_IP
from dataplane.core.frames import VROUTER_MAC
from fabric.nova_metadata import InstancesError, InstanceStore, parse_instances
from tests.dataplanes import TAP1, TAP2, VHOST, dataplane
from vrouter.agent.config import ConfigError, parse_config
from vrouter.agent.rate import SetupRate
from vrouter.tools.instances import InstanceSetError, change_of, set_instance
from vrouter.tools.vifdump import PcapOut, Record, describe, mac_bytes


class ListSink(Sink):
    def __init__(self, room: int = 1 << 30) -> None:
        self.records: list[Record] = []
        self.room = room

    def send(self, record: bytes) -> bool:
        if len(self.records) >= self.room:
            return False
        self.records.append(Record(record))
        return True


def syn(src: str = "10.1.1.3", dst: str = "169.254.169.254", sport: int = 40000, dport: int = 80, flags: str = "S") -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


# -- vifdump in the dataplane --------------------------------------------------------------------


def test_nobody_capturing_leaves_the_per_packet_path_as_it_is():
    d = dataplane()
    assert d.process == d.path.process  # the bound method itself: no wrapper, no check per packet
    c = Capture(3, ListSink())
    d.captures.add(c)
    assert d.process == d.captures.process
    d.captures.remove(c)
    assert d.process == d.path.process


def test_a_captured_vif_sees_its_packets_both_ways_and_the_nat_other_side_when_asked():
    d = dataplane()
    plain, rewritten = ListSink(), ListSink()
    d.captures.add(Capture(3, plain))
    d.captures.add(Capture(3, rewritten, rewritten=True))
    out = d.process(syn(), TAP1)  # VM -> metadata: NATed to the proxy
    back = bytes(IP(out.payload))
    reply = bytes(IP(src=IP(back).dst, dst=IP(back).src) / TCP(sport=8097, dport=40000, flags="SA"))
    answer = d.process(reply, 0)  # the proxy's answer, from the node itself
    assert answer.accept and answer.payload is not None
    assert [(r.direction, r.kind) for r in plain.records] == [(RX, KIND_IP), (TX, KIND_IP)]
    assert plain.records[0].data == syn() and plain.records[1].data == answer.payload  # as on the tap
    assert [(r.direction, r.kind) for r in rewritten.records] == [(RX, KIND_IP), (RX, OTHER_SIDE), (TX, OTHER_SIDE), (TX, KIND_IP)]
    assert rewritten.records[1].data == out.payload and rewritten.records[2].data == reply
    # another vif's packets are not vif 3's
    d.process(syn(src="10.1.1.4", sport=40001), TAP2)
    assert len(plain.records) == 2


def test_a_vm_to_vm_packet_is_rx_of_one_and_tx_of_the_other_and_drops_are_marked():
    d = dataplane()
    three, four = ListSink(), ListSink()
    d.captures.add(Capture(3, three))
    d.captures.add(Capture(4, four))
    ping = bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(id=7))
    assert d.process(ping, TAP1).accept
    assert [(r.vif, r.direction) for r in three.records] == [(3, RX)] and [(r.vif, r.direction) for r in four.records] == [(4, TX)]
    v = d.process(bytes(IP(src="10.1.1.3", dst="10.9.9.9") / ICMP(id=8)), TAP1)
    assert not v.accept and three.records[-1].reason == int(v.reason) and "dropped: No L3 Route" in describe(three.records[-1], "tap")


def test_a_slow_reader_loses_copies_counted_and_a_gone_one_ends_its_capture():
    d = dataplane()
    slow = Capture(3, ListSink(room=2))
    d.captures.add(slow)
    for port in range(40000, 40005):
        assert d.process(syn(sport=port), TAP1).accept  # the verdicts do not change
    assert (slow.sent, slow.lost) == (2, 3)

    class Gone(ListSink):
        def send(self, record: bytes) -> bool:
            self.gone = True
            return False

    gone = Capture(4, Gone())
    d.captures.add(gone)
    d.process(syn(src="10.1.1.4", sport=40100), TAP2)
    assert 4 not in d.captures.by_vif and 3 in d.captures.by_vif
    d.captures.remove(slow)
    assert d.process == d.path.process


def test_frames_sent_while_a_packet_is_processed_come_after_it():
    d = dataplane()
    sink = ListSink()
    d.captures.add(Capture(3, sink))
    vif = d.vifs[3]
    d.path.on_trap = lambda trap, pkt, v, ihl: d.captures.frame(v, TX, b"answer-frame")
    d.traps.set(1, bytes([10, 1, 1, 1]), bytes([10, 1, 1, 2]))
    d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.1") / ICMP(id=9)), TAP1)
    assert [(r.direction, r.kind) for r in sink.records] == [(RX, KIND_IP), (TX, FRAME)] and sink.records[0].trapped
    d.captures.frame(vif, RX, b"arp")
    assert sink.records[-1].data == b"arp"


def test_records_become_frames_tcpdump_can_read(tmp_path):
    d = dataplane()
    sink = ListSink()
    d.captures.add(Capture(3, sink))
    d.process(bytes(IP(src="10.1.1.3", dst="10.1.1.4") / ICMP(id=7, seq=1)), TAP1)
    arp = bytes(Ether(src="02:00:00:00:00:03", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.1.3", pdst="10.1.1.1"))
    d.captures.frame(d.vifs[3], RX, arp)
    mac = mac_bytes("02:00:00:00:00:03")
    path = tmp_path / "x.pcap"
    with open(path, "wb") as f:
        out = PcapOut(f)
        for r in sink.records:
            out.write(r.frame(mac), r.time_ns)
    with open(path, "rb") as f:
        frames = [dpkt.ethernet.Ethernet(buf) for _, buf in dpkt.pcap.Reader(f)]
    assert frames[0].src == mac and frames[0].dst == VROUTER_MAC and isinstance(frames[0].data, dpkt.ip.IP)
    assert isinstance(frames[1].data, dpkt.arp.ARP)
    assert "ARP, Request who-has 10.1.1.1 tell 10.1.1.3" in describe(sink.records[1], "tap")
    assert "IP 10.1.1.3 > 10.1.1.4: ICMP echo request, id 7, seq 1" in describe(sink.records[0], "tap")


def test_a_packet_from_an_unknown_interface_is_not_copied():
    d = dataplane()
    sink = ListSink()
    d.captures.add(Capture(3, sink))
    d.captures.add(Capture(0, sink))
    d.process(syn(), 999)
    assert sink.records == []
    d.process(bytes(IP(src="10.10.0.1", dst="10.10.0.2") / TCP(sport=8775, dport=1)), VHOST)
    assert [r.vif for r in sink.records] == [0]  # vhost0's own, dropped (no flow)


# -- the instances file --------------------------------------------------------------------------


INSTANCES = {"instances": [{"uuid": "4f1c1d8e-8a43-4a7e-9b0e-2f0c6f7d1a01", "name": "vm1", "project_id": "ab", "meta": {"a": "b"},
                            "user_data": "#cloud-config\n"}]}  # fmt: skip
UUID = INSTANCES["instances"][0]["uuid"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not JSON"),
        ('{"instances": 3}', "expected"),
        ('{"instances": [{"name": "x"}]}', "instance 0: an object with a uuid"),
        ('{"instances": [{"uuid": "u", "meta": {"k": 1}}]}', "instance u: meta.k must be a string"),
        ('{"instances": [{"uuid": "u", "user_data": {"base64": "!!"}}]}', "user_data must be a string or"),
        ('{"instances": [{"uuid": "u"}, {"uuid": "u"}]}', "instance u: twice"),
        ('{"instances": [{"uuid": "u", "name": 5}]}', "name must be a string"),
    ],
)
def test_an_instances_file_that_cannot_be_used_is_refused_naming_what(text, says):
    with pytest.raises(InstancesError, match=says):
        parse_instances(text)


def test_the_store_reloads_a_replaced_file_and_keeps_the_old_instances_when_the_new_is_bad(tmp_path, caplog):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(INSTANCES))
    store = InstanceStore(str(path))
    assert store.get(UUID)["name"] == "vm1"
    changed = json.loads(json.dumps(INSTANCES))
    changed["instances"][0]["name"] = "renamed"
    (tmp_path / "new").write_text(json.dumps(changed))
    os.replace(tmp_path / "new", path)
    assert store.get(UUID)["name"] == "renamed"  # the next request
    (tmp_path / "new").write_text('{"instances": [{"uuid": 1}]}')
    os.replace(tmp_path / "new", path)
    with caplog.at_level(logging.ERROR, logger="vrouter.nova"):
        assert store.get(UUID)["name"] == "renamed"
        assert store.get(UUID)["name"] == "renamed"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "keeping the 1 instances" in refusals[0].getMessage()  # said once, not at every request


def test_instance_set_edits_one_instance_and_replaces_the_file(tmp_path):
    path = tmp_path / "instances.json"
    other = dict(INSTANCES["instances"][0], uuid="5f1c1d8e-8a43-4a7e-9b0e-2f0c6f7d1a02", name="vm2")
    path.write_text(json.dumps({"instances": [INSTANCES["instances"][0], other]}))
    inode = os.stat(path).st_ino
    ud, key = tmp_path / "ud", tmp_path / "key.pub"
    ud.write_bytes(b"\x00\xffbinary")
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ1bmN0aW9uYWw test@x\n")
    inst, done = set_instance(str(path), change_of(UUID.upper(), "new", str(ud), str(key), ["x=1", "a=c"]))
    assert done == ["name", "user data (8 bytes)", "ssh key", "meta a, x"]
    data = parse_instances(path.read_text())
    assert data[UUID]["name"] == data[UUID]["hostname"] == "new" and data[UUID]["meta"] == {"a": "c", "x": "1"}
    assert data[UUID]["user_data"] == {"base64": "AP9iaW5hcnk="} and data[UUID]["public_keys"]["default"].startswith("ssh-ed25519 ")
    assert data[other["uuid"]] == other and os.stat(path).st_ino != inode
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".instances.")]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("nope", None, None, None, []), "--uuid 'nope': not a uuid"),
        ((UUID, None, None, None, []), "nothing to change"),
        ((UUID, None, None, None, ["k"]), "--meta 'k': KEY=VALUE"),
        ((UUID, None, None, None, ["k=" + "v" * 256]), "at most 255"),
        ((UUID, None, "/nonexistent/ud", None, []), "--user-data /nonexistent/ud"),
        ((UUID, "", None, None, []), "--name ''"),
    ],
)
def test_instance_set_refuses_what_nova_would_not_take(args, says):
    with pytest.raises(InstanceSetError, match=says.replace("(", r"\(")):
        change_of(*args)


def test_instance_set_refuses_large_user_data_bad_keys_and_unknown_instances(tmp_path):
    big, bad_key = tmp_path / "big", tmp_path / "bad.pub"
    big.write_bytes(b"x" * 50000)
    bad_key.write_text("not a key")
    with pytest.raises(InstanceSetError, match="more than Nova takes"):
        change_of(UUID, None, str(big), None, [])
    with pytest.raises(InstanceSetError, match="not one OpenSSH public key"):
        change_of(UUID, None, None, str(bad_key), [])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(INSTANCES))
    with pytest.raises(InstanceSetError, match="no such instance"):
        set_instance(str(path), change_of("9f1c1d8e-8a43-4a7e-9b0e-2f0c6f7d1a09", "x", None, None, []))
    with pytest.raises(InstanceSetError, match="cannot read"):
        set_instance(str(tmp_path / "absent.json"), change_of(UUID, "x", None, None, []))


# -- metrics and agent.conf ----------------------------------------------------------------------


def test_setup_rate_over_the_window():
    r = SetupRate()
    assert r.rate() == 0.0
    for t in range(15):
        r.sample(float(t), t * 100)
    assert r.rate() == pytest.approx(100.0)
    assert r.samples[-1][0] - r.samples[0][0] <= 11


def test_agent_conf_keys_for_metrics_and_the_journal():
    cfg = parse_config("[DEFAULT]\nmetrics_port = 0\n[METADATA]\nmetadata_journal_size = 20\n")
    assert cfg.default.metrics_port == 0 and cfg.metadata.journal_size == 20
    assert parse_config("").default.metrics_port == 8085
    with pytest.raises(ConfigError, match="metrics_port = 70000: out of range"):
        parse_config("[DEFAULT]\nmetrics_port = 70000\n")
    with pytest.raises(ConfigError, match="metadata_journal_size"):
        parse_config("[METADATA]\nmetadata_journal_size = -1\n")
