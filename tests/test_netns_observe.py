"""Watching and breaking the metadata path per instance on a real node (needs root): the journal,
faults, live metadata, the Prometheus metrics and vifdump, as a user runs them. One emulated host
with 2 VMs serves the module; every test removes the faults it adds."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.emulated_host import EmulatedHost
from tests.helpers import SEND_UDP, VROUTER, metric, scrape, send_udp, wait_until

pytestmark = pytest.mark.netns

MD = "/openstack/latest/meta_data.json"


def instance(host: EmulatedHost, i: int) -> str:
    return host.vms[i]["instance_uuid"]


def log(host: EmulatedHost, *args: str) -> list[dict]:
    return host.cli_json("metadata", "log", *args)


def last_seq(host: EmulatedHost) -> int:
    entries = log(host)
    return entries[-1]["seq"] if entries else 0


def since(host: EmulatedHost, seq: int, *args: str) -> list[dict]:
    return [e for e in log(host, *args) if e["seq"] > seq]


@pytest.fixture
def faults(host):
    """Faults added by the test are deleted after it, pass or fail."""
    yield
    for rule in host.cli_json("metadata", "fault", "list"):
        host.cli("metadata", "fault", "del", str(rule["id"]))


# -- the journal -------------------------------------------------------------------------------


def test_a_vms_requests_are_in_the_journal_with_their_paths_and_statuses(host):
    seq = last_seq(host)
    assert host.metadata(0, MD)[0] == 200
    assert host.metadata(0, "/openstack/latest/nothing-here")[0] == 404
    assert host.metadata(1, "/latest/meta-data/hostname")[0] == 200
    mine = since(host, seq, "--instance", instance(host, 0))
    assert [(e["path"], e["status"]) for e in mine] == [(MD, 200), ("/openstack/latest/nothing-here", 404)]
    e = mine[0]
    assert e["vif"] == host.vms[0]["vif"] and e["vm_ip"] == host.vms[0]["ip"] and e["method"] == "GET"
    assert e["bytes_in"] > 50 and e["bytes_out"] > 300 and 0 <= e["nova_ms"] <= e["total_ms"]
    other = since(host, seq, "--vif", str(host.vms[1]["vif"]))
    assert [(x["instance"], x["path"]) for x in other] == [(instance(host, 1), "/latest/meta-data/hostname")]
    text = host.cli("metadata", "log", "--instance", instance(host, 0)).stdout
    assert MD in text and "404" in text
    # vrouter status: the vRouter agent's own counters per vif
    per_vif = host.cli_json("status")["proxy"]["per_vif"]
    c = per_vif[str(host.vms[0]["vif"])]
    assert c["requests"] >= 2 and c["responses"] >= 2 and c["proxy_sessions"] >= 2 and c["internal_errors"] == 0
    assert "proxy sessions" in host.cli("status").stdout


def test_follow_prints_new_entries_as_they_come(host):
    assert host.metadata(1, "/latest/meta-data/")[0] == 200
    follow = subprocess.Popen([str(VROUTER), "metadata", "log", "--follow", "--json", "--duration", "20", "--vif", str(host.vms[1]["vif"]),
                               "--state-dir", host.state_dir], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = follow.stdout.readline()  # what is there already comes first
        assert json.loads(first)["vif"] == host.vms[1]["vif"]
        assert host.metadata(1, "/latest/meta-data/instance-id")[0] == 200
        while True:
            e = json.loads(follow.stdout.readline())
            if e["path"] == "/latest/meta-data/instance-id":
                break
        assert e["status"] == 200 and e["instance"] == instance(host, 1)
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 0


def test_journal_query_errors_are_clear(host):
    r = host.cli("metadata", "log", "--instance", "not-a-uuid")
    assert r.returncode == 1 and "--instance 'not-a-uuid': not a uuid" in r.stderr
    r = host.cli("metadata", "log", "--duration", "3")
    assert r.returncode == 1 and "--duration goes with --follow" in r.stderr


# -- faults ------------------------------------------------------------------------------------


def test_status_fault_on_one_instance_ends_after_its_count_while_the_other_is_served(host, faults):
    rule = host.cli_json("metadata", "fault", "add", "--instance", instance(host, 0), "--path", "/openstack/*/meta_data.json",
                         "--status", "503", "--count", "2")  # fmt: skip
    seq = last_seq(host)
    statuses = []
    for _ in range(3):
        statuses.append(host.metadata(0, MD)[0])
        assert host.metadata(1, MD)[0] == 200  # the other VM, the same path, in between
    assert statuses == [503, 503, 200]
    status, body = host.metadata(0, "/openstack/latest/user_data")
    assert status == 200  # another path
    mine = since(host, seq, "--instance", instance(host, 0))
    assert [(e["status"], e["fault"]) for e in mine if e["path"] == MD] == [(503, rule["id"]), (503, rule["id"]), (200, 0)]
    assert all(e["fault"] == 0 for e in since(host, seq, "--instance", instance(host, 1)))
    assert host.cli_json("metadata", "fault", "list") == []  # its count is used up
    assert "no fault %d in force" % rule["id"] in host.cli("metadata", "fault", "del", str(rule["id"])).stderr


def test_delay_and_reset_faults_reach_one_vm_only(host, faults):
    host.cli_json("metadata", "fault", "add", "--vif", str(host.vms[0]["vif"]), "--path", "/latest/*", "--delay", "1.5")
    host.cli_json("metadata", "fault", "add", "--instance", instance(host, 0), "--path", MD, "--reset")
    r = host.in_vm(0, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "http://169.254.169.254/latest/meta-data/hostname")
    code, took = r.stdout.split()
    assert code == "200" and float(took) >= 1.5
    r = host.in_vm(1, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "http://169.254.169.254/latest/meta-data/hostname")
    code, took = r.stdout.split()
    assert code == "200" and float(took) < 1.5
    r = host.in_vm(0, "curl", "-s", "-o", "/dev/null", "http://169.254.169.254" + MD)
    assert r.returncode in (18, 56)  # curl: partial file, or connection reset while receiving
    assert host.metadata(1, MD)[0] == 200
    listed = {f["effect"]: f for f in host.cli_json("metadata", "fault", "list")}
    assert listed["delay"]["applied"] == 1 and listed["reset"]["applied"] == 1


def test_a_refuse_fault_resets_one_vms_connections_with_no_answer_and_journals_them(host, faults):
    """What ``vrouter-lab check --config-drive only`` puts on its instance: to that VM, no metadata service."""
    rule = host.cli_json("metadata", "fault", "add", "--instance", instance(host, 0), "--refuse")
    r = host.in_vm(0, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://169.254.169.254" + MD)
    assert r.returncode in (52, 56) and r.stdout == "000"  # curl: empty reply, or reset: no answer at all
    assert host.metadata(1, MD)[0] == 200
    (listed,) = host.cli_json("metadata", "fault", "list")
    assert listed["effect"] == "refuse" and listed["applied"] == 1
    (entry,) = [e for e in host.cli_json("metadata", "log", "--instance", instance(host, 0)) if e["fault"] == rule["id"]]
    assert entry["path"] == MD and entry["reason"] == "fault"


def test_drop_fault_hangs_until_the_vm_gives_up_and_is_journaled(host, faults):
    rule = host.cli_json("metadata", "fault", "add", "--instance", instance(host, 1), "--drop", "--for", "60")
    assert rule["left_s"] is not None and rule["left_s"] <= 60
    seq = last_seq(host)
    assert host.metadata(1, "/latest/meta-data/", max_time=1.5)[0] == 0
    assert host.metadata(0, "/latest/meta-data/")[0] == 200
    e = wait_until(lambda: since(host, seq, "--instance", instance(host, 1)), 10, "the dropped request in the journal")[0]
    assert e["status"] == 0 and e["fault"] == rule["id"] and e["total_ms"] >= 1000


def test_faults_that_make_no_sense_are_refused_naming_the_option(host):
    for args, says in [
        (["--all", "--status", "700"], "--status 700"),
        (["--all"], "one effect"),
        (["--all", "--vif", "3", "--drop"], "one of --instance UUID, --vif N or --all"),
        (["--instance", "nope", "--drop"], "--instance 'nope': not a uuid"),
        (["--all", "--drop", "--probability", "0"], "--probability 0"),
        (["--all", "--reset", "--path", "openstack"], "--path 'openstack'"),
    ]:
        r = host.cli("metadata", "fault", "add", *args)
        assert r.returncode == 1 and says in r.stderr, (args, r.stderr)
    assert host.cli_json("metadata", "fault", "list") == []


def test_faults_survive_a_restart_of_the_proxy_process_with_their_counts(host, faults):
    rule = host.cli_json("metadata", "fault", "add", "--vif", str(host.vms[0]["vif"]), "--status", "418", "--count", "3")
    assert host.metadata(0, MD)[0] == 418
    assert host.cli_json("metadata", "fault", "list")[0]["applied"] == 1
    pid = host.cli_json("status")["proxy"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: host.cli_json("status")["proxy"]["pid"] not in (0, pid), 20, "the proxy process restarted")
    (again,) = host.cli_json("metadata", "fault", "list")
    assert again["id"] == rule["id"] and again["applied"] == 1  # the new process goes on from there
    assert [host.metadata(0, MD)[0] for _ in range(3)] == [418, 418, 200]


# -- live metadata -----------------------------------------------------------------------------


def test_instance_set_reaches_the_next_request_and_a_bad_file_keeps_the_old_data(host, tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\nhostname: renamed\n")
    r = host.cli("instance", "set", "--uuid", instance(host, 0), "--user-data", str(ud), "--meta", "stage=two", "--name", "vm1-renamed")
    assert r.returncode == 0, r.stderr
    assert host.metadata(0, "/openstack/latest/user_data") == (200, "#cloud-config\nhostname: renamed\n")
    md = json.loads(host.metadata(0, MD)[1])
    assert md["name"] == md["hostname"] == "vm1-renamed" and md["meta"]["stage"] == "two"
    assert json.loads(host.metadata(1, MD)[1])["name"] == host.vms[1]["name"]  # the other instance is as it was
    # a file that does not parse is refused, with a log line, and the instances stay as they were
    path = os.path.join(host.state_dir, "instances.json")
    good = open(path).read()
    with open(path + ".new", "w") as f:
        f.write('{"instances": [{"uuid": 7}]}')
    os.replace(path + ".new", path)
    try:
        wait_until(lambda: "refused %s" % path in open(os.path.join(host.state_dir, "nova.log")).read(), 10, "nova-metadata to refuse it")
        assert json.loads(host.metadata(0, MD)[1])["name"] == "vm1-renamed"
    finally:
        with open(path + ".new", "w") as f:
            f.write(good)
        os.replace(path + ".new", path)
    r = host.cli("instance", "set", "--uuid", instance(host, 0), "--meta", "novalue")
    assert r.returncode == 1 and "--meta 'novalue': KEY=VALUE" in r.stderr
    r = host.cli("instance", "set", "--uuid", "9d9f3b8e-0000-4000-8000-000000000000", "--name", "x")
    assert r.returncode == 1 and "no such instance" in r.stderr


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_match_the_traffic_sent(host):
    a, b = host.vms
    # vm2's address and the gateway's resolved (the UDP to 10.9.9.9 goes by the gateway): only the UDP below moves the
    # counters. Left to it, a first run of this test counted vm1's ARP request for the gateway (46 packets, 28 bytes more).
    for peer in (b["ip"], a["gateway"]):
        assert host.in_vm(0, "ping", "-c", "1", "-W", "2", peer).returncode == 0
    before = scrape(host)
    journal_before = sum(1 for e in log(host, "--instance", instance(host, 1)) if e["status"] == 200)
    send_udp(host, 0, b["ip"], 9997, 40, 100, 41010)
    send_udp(host, 0, "10.9.9.9", 53, 5, 10, 41011)  # no route: dropped
    assert host.metadata(1, MD)[0] == 200
    wait_until(lambda: metric(scrape(host), "vrouter_vif_packets_total", vif=str(b["vif"]), direction="tx")
               - metric(before, "vrouter_vif_packets_total", vif=str(b["vif"]), direction="tx") >= 40, 10, "40 packets out to vm2")  # fmt: skip
    after = scrape(host)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vrouter_vif_packets_total", vif=str(a["vif"]), direction="rx") == 45
    assert delta("vrouter_vif_bytes_total", vif=str(a["vif"]), direction="rx") == 40 * 128 + 5 * 38
    assert delta("vrouter_vif_packets_total", vif=str(b["vif"]), direction="tx") >= 40  # and the metadata answer's segments
    assert delta("vrouter_vif_drops_total", vif=str(a["vif"]), reason="No L3 Route") == 5
    assert delta("vrouter_drops_total", reason="No L3 Route") == 5
    assert delta("vrouter_flow_setups_total") >= 2 + 1  # the UDP pair, the Drop entry (and the metadata pair)
    assert delta("vrouter_metadata_requests_total", instance=instance(host, 1), status="200") == 1
    assert delta("vrouter_metadata_vif_requests_total", vif=str(b["vif"])) == 1
    assert delta("vrouter_metadata_request_duration_seconds_count") == 1 and delta("vrouter_metadata_nova_latency_seconds_count") == 1
    assert metric(after, "vrouter_metadata_proxy_up") == 1 and metric(after, "vrouter_flows_active") >= 3
    # the journal saw the same (its entries start anew with a restarted proxy process, which the
    # counters do not: the agent keeps what a dead one counted)
    journal_200s = sum(1 for e in log(host, "--instance", instance(host, 1)) if e["status"] == 200)
    assert journal_200s - journal_before == 1
    assert metric(after, "vrouter_metadata_requests_total", instance=instance(host, 1), status="200") >= journal_200s
    r = host.in_compute("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://%s:8085/other" % host.layout["vhost0"]["ip"])
    assert r.stdout == "404"
    r = host.in_vm(0, "curl", "-s", "-m", "2", "http://%s:8085/metrics" % host.layout["vhost0"]["ip"])
    assert r.returncode != 0  # a VM cannot read them


def test_a_metrics_port_in_use_is_a_clear_start_up_error(host):
    assert host.setup("stop-agent").returncode == 0
    holder = subprocess.Popen(["ip", "netns", "exec", host.compute, sys.executable, "-c",
                               "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 8085)); s.listen(); print('up', flush=True); "
                               "sys.stdin.read()", host.layout["vhost0"]["ip"]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "up"
        r = host.setup("start-agent")
        assert r.returncode != 0
        agent_log = open(os.path.join(host.state_dir, "agent.log")).read()
        assert "[DEFAULT] metrics_port 8085: cannot listen on %s:8085" % host.layout["vhost0"]["ip"] in agent_log + r.stderr + r.stdout
    finally:
        holder.stdin.close()
        holder.wait(10)
        r = host.setup("start-agent")
        assert r.returncode == 0, r.stderr + r.stdout
    wait_until(lambda: host.metadata(0, MD)[0] == 200, 20, "metadata again")


# -- vifdump -----------------------------------------------------------------------------------


def test_vifdump_pcap_of_ten_pings_holds_twenty_packets_tcpdump_reads(host, tmp_path):
    a, b = host.vms
    assert host.in_vm(0, "ping", "-c", "1", "-W", "2", b["ip"]).returncode == 0  # ARP resolved before the capture
    pcap = tmp_path / "vm1.pcap"
    dump = subprocess.Popen([str(VROUTER), "vifdump", "-i", str(a["vif"]), "-w", str(pcap), "-c", "20", "--duration", "30",
                             "--state-dir", host.state_dir], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "listening on vif0/%d" % a["vif"] in dump.stderr.readline()
        assert host.in_vm(0, "ping", "-c", "10", "-i", "0.2", "-W", "2", "-w", "20", b["ip"]).returncode == 0
        assert dump.wait(30) == 0
    finally:
        if dump.poll() is None:
            dump.kill()
    assert "20 packets captured, 0 lost" in dump.stderr.read()
    r = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 20, r.stdout + r.stderr
    assert sum("ICMP echo request" in x and "%s > %s" % (a["ip"], b["ip"]) in x for x in lines) == 10
    assert sum("ICMP echo reply" in x and "%s > %s" % (b["ip"], a["ip"]) in x for x in lines) == 10


def test_vifdump_prints_the_nat_rewrite_and_the_agents_answers(host):
    a = host.vms[0]
    dump = subprocess.Popen([str(VROUTER), "vifdump", "-i", str(a["vif"]), "--rewritten", "--duration", "20", "--state-dir", host.state_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "listening on vif0/%d" % a["vif"] in dump.stderr.readline()
        assert host.in_vm(0, "ping", "-c", "1", "-W", "2", a["gateway"]).returncode == 0
        assert host.metadata(0, MD)[0] == 200
        lines = []
        wait_until(lambda: lines.append(dump.stdout.readline()) or any("Flags [F" in x and "169.254.169.254.80 >" in x for x in lines), 15, "the FIN")
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    text = "".join(lines)
    assert "ICMP echo request" in text and "(to the agent)" in text and "ICMP echo reply" in text
    assert " rx IP %s." % a["ip"] in text and " > 169.254.169.254.80: Flags [S]," in text
    assert "169.254.0.%d" % a["vif"] in text and "(as rewritten)" in text and "(before the rewrite)" in text


def test_a_slow_vifdump_reader_loses_packets_and_never_slows_the_vms(host):
    a, b = host.vms
    dump = subprocess.Popen([str(VROUTER), "vifdump", "-i", str(b["vif"]), "--duration", "60", "--state-dir", host.state_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert b"listening on" in dump.stderr.readline()
        # nobody reads its output: it blocks on the pipe, its socket fills, and the agent drops copies
        sender = subprocess.run(["ip", "netns", "exec", a["namespace"], sys.executable, "-c", SEND_UDP, b["ip"], "9996", "3000", "300",
                                 "41020", "0.005"], timeout=60)  # fmt: skip
        assert sender.returncode == 0
        flows = host.cli_json("flow", "-l")
        (f,) = [f for f in flows if (f["src"], f["sport"], f["dport"]) == (a["ip"], 41020, 9996)]
        assert f["packets"] == 3000  # every packet went through
    finally:
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=30)
    lost = int(err.decode().split(" lost")[0].rsplit(", ", 1)[1])
    assert lost > 0, err


def test_vifdump_on_a_vif_that_does_not_exist_says_so(host):
    r = host.cli("vifdump", "-i", "77", "-c", "1")
    assert r.returncode == 1 and "vif0/77 does not exist" in r.stderr
    r = host.cli("vifdump", "-i", "3", "-c", "0")
    assert r.returncode == 1 and "-c 0" in r.stderr
    assert not [d for d in os.listdir("/tmp") if d.startswith("vrouter-vifdump.")]
