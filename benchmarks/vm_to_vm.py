"""VM to VM, the agent's CPU meanwhile, and the flows the Python engine sets up a second: the part
of ``benchmarks/run.py``'s ``Bench`` that measures traffic between two VMs (a mixin: ``Bench``
gives the lab, its VMs, the agent's restarts and status)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from benchmarks.clients import FLOW_PORTS, FLOW_SOCKETS, FLOW_SOURCE, TCP_SINK, TCP_SOURCE, UDP_SINK, UDP_SOURCE
from benchmarks.shell import VROUTER, cpu_seconds, descendants, iperf3_tcp, iperf3_udp, sh

# At most this long a flood of new flows (and the idle CPU measurement): at 37,000 pairs/s, the
# most seen here, 3 s fill 220,000 of the table's 629,145 entries (Flow Table Full begins in the
# fullest buckets; the run prints those drops)
FLOW_SECONDS = 3


class VmToVm:
    vms: list[dict]
    seconds: float
    state: str

    def restart_agent(self) -> None:
        raise NotImplementedError  # Bench's

    def status(self) -> dict:
        raise NotImplementedError  # Bench's

    def vm_to_vm(self, tcp: bool = True, iperf: bool = True) -> dict:
        """VM-to-VM small UDP from the Python sender (and from iperf3 with ``iperf``) and, with
        ``tcp``, the Python TCP stream."""
        a, b = self.vms[0], self.vms[1]
        sink = subprocess.Popen(["ip", "netns", "exec", b["namespace"], sys.executable, "-c", UDP_SINK, b["ip"]], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        sent = int(sh("ip", "netns", "exec", a["namespace"], sys.executable, "-c", UDP_SOURCE, b["ip"], str(self.seconds),
                      timeout=self.seconds + 30).stdout)  # fmt: skip
        got = json.loads(sink.communicate(timeout=30)[0])
        udp = {
            "udp_pps": round(got["packets"] / got["seconds"]) if got["seconds"] else 0,
            "udp_delivered": round(got["packets"] / sent, 3) if sent else 0,
        }
        if iperf:
            udp.update(self.iperf3_udp(a, b))
        if not tcp:
            return udp
        sink_t = subprocess.Popen(["ip", "netns", "exec", b["namespace"], sys.executable, "-c", TCP_SINK, b["ip"]], stdout=subprocess.PIPE, text=True)
        assert sink_t.stdout.readline().strip() == "ready"
        sh("ip", "netns", "exec", a["namespace"], sys.executable, "-c", TCP_SOURCE, b["ip"], str(self.seconds), timeout=self.seconds + 30)
        stream = json.loads(sink_t.communicate(timeout=30)[0])
        return {**udp, "tcp_mbit": round(stream["bytes"] * 8 / stream["seconds"] / 1e6, 1)}

    def iperf3_udp(self, a: dict, b: dict) -> dict:
        return iperf3_udp(a, b, self.seconds)

    def vm_pair(self, agent: bool) -> dict:
        """VM-to-VM from C senders, each round: small UDP (iperf3 -u -l 64 -b 0) and a TCP stream
        (iperf3), and with ``agent`` the CPU of the agent's processes over each, % of one core."""
        a, b = self.vms[0], self.vms[1]
        out: dict = {}
        for kind, run in (("udp", lambda: iperf3_udp(a, b, self.seconds)), ("tcp", lambda: iperf3_tcp(a, b, self.seconds))):
            if agent:
                figures, cpu = self.agent_cpu_during(run)
                out.update(figures)
                out["agent_cpu_" + kind] = cpu
            else:
                out.update(run())
        return out

    def idle_cpu(self) -> float:
        """The agent's CPU with no traffic at all (% of one core), the floor of the figures above."""
        return self.agent_cpu_during(lambda: time.sleep(min(self.seconds, FLOW_SECONDS)))[1]

    def agent_pids(self) -> list[int]:
        """The agent's processes: itself, its dataplane workers, its proxy, and any other process
        under it."""
        st = self.status()
        pids = {st["pid"], st["proxy"]["pid"], *st["dataplane_workers"]} - {0}
        return sorted(pids | descendants(st["pid"]))

    def agent_cpu_during(self, run):  # noqa: ANN001, ANN201
        """``run()``'s result, and the CPU time of the agent's processes while it ran (utime +
        stime from /proc: % of one core; a process gone meanwhile counts what it had)."""
        pids = self.agent_pids()
        before = {p: cpu_seconds(p) for p in pids}
        t0 = time.monotonic()
        result = run()
        elapsed = time.monotonic() - t0
        used = sum(max(0.0, cpu_seconds(p) - before[p]) for p in pids)
        return result, round(100 * used / elapsed, 1)

    def flow_setup_rate(self) -> dict:
        """Flows the Python engine sets up a second, at most: vm1 sends vm2 a new 5-tuple in every
        packet, as fast as it can, for up to FLOW_SECONDS (each a miss, in either datapath), and
        the agent's count of pairs set up says how many it made; vm2 drops the packets without an
        answer.  The agent is restarted before, so that its table is empty (the fairness floods
        leave flows for 180 s), and after, so that these flows weigh on nothing else.  A sender
        that printed nothing is said on stderr and counts as no flows (a failed measurement)."""
        a, b = self.vms[0], self.vms[1]
        seconds = min(self.seconds, FLOW_SECONDS)
        lo, hi = FLOW_PORTS
        rule = "table ip vrouter_bench_sink {\n chain input {\n  type filter hook input priority 0; policy accept;\n  udp dport %d-%d drop\n }\n}\n"
        self.restart_agent()
        sh("ip", "netns", "exec", b["namespace"], "nft", "-f", "-", input=rule % (lo, hi))
        try:
            before = self.status()
            setups0, drops0 = before["flow_setups"], self.drops()

            def send() -> dict:
                r = sh("ip", "netns", "exec", a["namespace"], sys.executable, "-c", FLOW_SOURCE, b["ip"], str(seconds), str(FLOW_SOCKETS),
                       str(lo), str(hi), timeout=seconds + 60, check=False)  # fmt: skip
                try:
                    return json.loads(r.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    print("the sender of new flows gave no figures: %s" % (r.stderr.strip()[-300:] or "it printed nothing"), file=sys.stderr)
                    return {"sent": 0, "seconds": 0}

            sent, cpu = self.agent_cpu_during(send)
            after = self.status()
            setups = after["flow_setups"] - setups0
            drops = {k: n - drops0.get(k, 0) for k, n in self.drops().items() if n - drops0.get(k, 0)}
        finally:
            sh("ip", "netns", "exec", b["namespace"], "nft", "delete", "table", "ip", "vrouter_bench_sink", check=False)
        self.restart_agent()
        secs = sent["seconds"]
        return {
            "setups_per_s": round(setups / secs) if secs else 0,
            "sent_per_s": round(sent["sent"] / secs) if secs else 0,
            "agent_cpu": cpu,
            "setups": setups,
            "seconds": round(secs, 2),
            "flows_active": after["flows_active"],
            "drops": drops,
        }

    def drops(self) -> dict[str, int]:
        """The agent's dropped packets so far, by reason (``vrouter dropstats``)."""
        d = json.loads(sh(VROUTER, "dropstats", "--json", "--state-dir", self.state).stdout)
        return {k: v for k, v in d.get("counts", d).items() if isinstance(v, int)}
