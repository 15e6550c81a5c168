"""The other VMs, while the attacker fuzzes: each reads its own metadata in a loop and pings the
others and its gateway, over IPv4 and IPv6; every failed read and every lost ping is counted.

The reads are ``topology.clients``'s: cloud-init's requests in turn, a new connection each, each
answer checked to be the VM's own, made from one process with each VM's sockets in its namespace;
here paced (one request every ``interval`` seconds a VM) rather than back to back, so that the
node's load is the attacker's.  The pings are iputils' ``ping`` in each VM's namespace, counted
from its summary.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from topology.clients import CloudInitClients, sequence

SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Ping:
    """One VM's ping of one address, for the whole run."""

    vm: str
    namespace: str
    dst: str
    count: int
    interval: float
    proc: subprocess.Popen[str] | None = None
    sent: int = 0
    received: int = 0
    error: str = ""

    @property
    def label(self) -> str:
        return "%s -> %s" % (self.vm, self.dst)

    def start(self) -> None:
        six = ["-6"] if ":" in self.dst else []
        cmd = ["ip", "netns", "exec", self.namespace, "ping", *six, "-n", "-q", "-c", str(self.count), "-i", str(self.interval), "-W", "2", self.dst]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finish(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            self.error = "ping did not end in time"
        m = SUMMARY.search(out or "")
        if m:
            self.sent, self.received = int(m.group(1)), int(m.group(2))
        else:
            self.error = self.error or "no summary: %s" % (out or "").strip()[-200:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"sent": self.sent, "lost": self.sent - self.received}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class Others:
    """The other VMs (layout entries), their reads and pings, for ``seconds``."""

    vms: list[dict]
    gateways: dict[str, tuple[str, str]]  # network uuid -> (gateway, gateway6)
    seconds: float
    interval: float = 0.25  # between two reads of a VM, between two pings
    pings: list[Ping] = field(default_factory=list)
    reads: list[dict] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    clients: CloudInitClients | None = None

    def start(self) -> None:
        count = max(1, int(self.seconds / self.interval))
        for vm in self.vms:
            gw, gw6 = self.gateways[vm["vn_uuid"]]
            dsts = [gw, gw6]
            for peer in self.vms:
                if peer is not vm and peer["vn_uuid"] == vm["vn_uuid"]:
                    dsts += [peer["ip"], peer["ipv6"]]
            self.pings += [Ping(vm["name"], vm["namespace"], d, count, self.interval) for d in dsts]
        for p in self.pings:
            p.start()
        self.clients = CloudInitClients(self.vms)
        self.thread = threading.Thread(target=self._reads, daemon=True)
        self.thread.start()

    def _reads(self) -> None:
        clients = self.clients
        assert clients is not None

        async def one(fd: int, uuid: str, deadline: float) -> dict:
            st: dict = {"ok": 0, "failed": 0, "worst": 0.0, "errors": []}
            seq = sequence(uuid)
            i = 0
            while time.monotonic() < deadline and not self.stop_event.is_set():
                t0 = time.monotonic()
                path, want = seq[i % len(seq)]
                i += 1
                await clients.get(fd, path, want, st)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - t0)))
            return st

        async def all_vms() -> list[dict]:
            deadline = time.monotonic() + self.seconds
            return list(await asyncio.gather(*(one(fd, uuid, deadline) for fd, uuid in clients.vms)))

        self.reads = asyncio.run(all_vms())

    def finish(self) -> None:
        """Wait for the pings and the reads to end (they end on their own after ``seconds``)."""
        for p in self.pings:
            p.finish(timeout=self.seconds + 30)
        if self.thread is not None:
            self.thread.join(timeout=self.seconds + 30)

    def stop(self) -> None:
        """Stop whatever still runs (after an error or a signal)."""
        self.stop_event.set()
        for p in self.pings:
            p.stop()
        if self.thread is not None:
            self.thread.join(timeout=15)
        if self.clients is not None and (self.thread is None or not self.thread.is_alive()):
            self.clients.close()
            self.clients = None

    def report(self) -> dict[str, object]:
        metadata = {}
        for vm, st in zip(self.vms, self.reads, strict=False):
            metadata[vm["name"]] = {"ok": st["ok"], "failed": st["failed"], "worst_s": round(st["worst"], 3), "errors": st["errors"][:3]}
        if len(self.reads) < len(self.vms):
            for vm in self.vms[len(self.reads) :]:
                metadata[vm["name"]] = {"ok": 0, "failed": 0, "errors": ["the reads did not finish"]}
        return {
            "metadata": metadata,
            "pings": {p.label: p.as_dict() for p in self.pings},
            "metadata_ok": sum(m["ok"] for m in metadata.values()),
            "metadata_failed": sum(m["failed"] for m in metadata.values()) + (len(self.vms) - len(self.reads)),
            "pings_sent": sum(p.sent for p in self.pings),
            "pings_lost": sum(p.sent - p.received for p in self.pings),
            "ping_errors": sum(1 for p in self.pings if p.error),
        }
