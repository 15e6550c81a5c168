"""The benchmarks' shell: commands in the namespaces, iperf3, and processes' CPU from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VROUTER = os.path.join(ROOT, ".venv", "bin", "vrouter")


def sh(*cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr.strip()[-2000:]))
    return r


def wait_listening(ns: str, port: int) -> None:
    deadline = time.monotonic() + 15
    while not sh("ip", "netns", "exec", ns, "ss", "-Hltn", "sport = :%d" % port, check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("nothing listens on port %d in %s" % (port, ns))
        time.sleep(0.05)  # polling for a listener, with a deadline


def iperf3(a: dict, b: dict, seconds: float, *client: str, port: int = 5201) -> dict:
    """One iperf3 test from VM ``a`` to VM ``b`` (layout records), ``client`` its options (-u,
    -l, -b ...): the "end" of iperf3's JSON report ({} if it gave none, or an error, said on
    stderr: its figures are then zeros, which the report counts as a failed measurement).  The
    server serves that one test and exits."""
    server = subprocess.Popen(["ip", "netns", "exec", b["namespace"], "iperf3", "-s", "-1", "-B", b["ip"], "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_listening(b["namespace"], port)  # not by connecting: iperf3 -s -1 would serve that one and exit
        r = sh("ip", "netns", "exec", a["namespace"], "iperf3", *client, "-c", b["ip"], "-p", str(port), "-t", str(int(seconds)), "--json",
               timeout=seconds + 60, check=False)  # fmt: skip
        out = json.loads(r.stdout) if r.stdout.strip() else {}
        if out.get("error") or not out.get("end"):
            why = out.get("error") or r.stderr.strip()[-300:] or "it printed nothing"
            print("iperf3 %s from %s to %s gave no figures: %s" % (" ".join(client), a["name"], b["name"], why), file=sys.stderr)
            return {}
        return out["end"]
    finally:
        try:
            server.wait(10)  # it exits after its one test
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def iperf3_udp(a: dict, b: dict, seconds: float) -> dict:
    """Small UDP packets (64-byte payloads) from a C sender, iperf3 at full speed (-b 0), from VM
    ``a`` to VM ``b``: what the receiver got a second, and the share of what was sent."""
    end = iperf3(a, b, seconds, "-u", "-l", "64", "-b", "0").get("sum", {})
    packets, lost, secs = end.get("packets", 0), end.get("lost_packets", 0), end.get("seconds", 0)
    return {
        "iperf3_udp_pps": round((packets - lost) / secs) if secs else 0,
        "iperf3_udp_delivered": round((packets - lost) / packets, 3) if packets else 0,
    }


def iperf3_tcp(a: dict, b: dict, seconds: float) -> dict:
    """A TCP stream from a C sender (iperf3, one connection) from VM ``a`` to VM ``b``: what the
    receiver got, in Mbit/s."""
    end = iperf3(a, b, seconds, port=5202)
    return {"iperf3_tcp_mbit": round(end.get("sum_received", {}).get("bits_per_second", 0) / 1e6, 1)}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (0 if it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (its children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out
