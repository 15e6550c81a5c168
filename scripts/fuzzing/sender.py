"""The sending process: ``python -m fuzzing.sender vm|fabric CONFIG`` (CONFIG: JSON).

Run in the attacker VM's namespace (``vm``): every protocol of ``packets`` in turn, one frame at a
time on eth0 (an AF_PACKET socket), at most ``pps`` frames a second, while two threads abuse
the metadata service over TCP (``malformed_http``: the cases in turn at ``http_rate`` a second,
and ``slowloris`` connections).  Run in the fabric's namespace (``fabric``): MPLS over UDP to the
attacked node's tunnel port (``tunnel``), through a raw IP socket, at ``pps``.

For ``seconds`` (or until SIGTERM), then it prints what it sent as JSON on stdout.  A frame scapy
cannot build is counted and skipped (``build_errors``: not the node's doing); a send the kernel
refuses is counted by errno (``send_errors``: eth0's MTU, a full queue).
"""

from __future__ import annotations

import errno
import json
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType

from fuzzing.malformed_http import HttpTally, cases_loop, slowloris
from fuzzing.packets import GENERATORS, mutate
from fuzzing.targets import Targets
from fuzzing.tunnel import mpls_over_udp

ETH_P_ALL = 0x0003


class Paced:
    """Sends one thing at a time, ``pps`` a second at most, counting by kind."""

    def __init__(self, pps: float, stop: threading.Event) -> None:
        self.interval = 1.0 / pps
        self.stop = stop
        self.sent: Counter[str] = Counter()
        self.build_errors: Counter[str] = Counter()
        self.send_errors: Counter[str] = Counter()

    def run(self, kinds: list[str], make: Callable[[str], Callable[[], None]], until: float) -> None:
        i = 0
        due = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= until:
                break
            if now < due:
                self.stop.wait(due - now)
                continue
            due = max(due + self.interval, now - 1.0)  # no burst to catch up after a stall of more than a second
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                send = make(kind)
            except Exception as e:  # noqa: BLE001 - scapy could not build what fuzz() chose: skipped, counted
                self.build_errors["%s: %s" % (kind, type(e).__name__)] += 1
                continue
            try:
                send()
                self.sent[kind] += 1
            except OSError as e:
                self.send_errors[errno.errorcode.get(e.errno or 0, str(e.errno))] += 1

    def report(self) -> dict[str, object]:
        return {"sent": dict(self.sent), "build_errors": dict(self.build_errors), "send_errors": dict(self.send_errors)}


def vm(cfg: dict, t: Targets, stop: threading.Event) -> dict[str, object]:
    rnd = random.Random(cfg["seed"])
    until = time.monotonic() + cfg["seconds"]
    tally = HttpTally()
    threads = [
        threading.Thread(target=cases_loop, args=(t, cfg["seed"] + 1, cfg["http_rate"], until, stop, tally), daemon=True),
        threading.Thread(target=slowloris, args=(t, random.Random(cfg["seed"] + 2), cfg["slowloris"], until, stop, tally), daemon=True),
    ]
    for th in threads:
        th.start()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((t.iface, 0))
    pacer = Paced(cfg["pps"], stop)

    def make(kind: str) -> Callable[[], None]:
        frame = mutate(GENERATORS[kind](t, rnd), rnd)

        def send() -> None:
            sock.send(frame)

        return send

    try:
        pacer.run(list(GENERATORS), make, until)
    finally:
        sock.close()
    for th in threads:
        th.join(timeout=10)
    return {**pacer.report(), "http": tally.as_dict()}


def fabric(cfg: dict, t: Targets, stop: threading.Event) -> dict[str, object]:
    rnd = random.Random(cfg["seed"] + 3)
    until = time.monotonic() + cfg["seconds"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    pacer = Paced(cfg["pps"], stop)

    def make(kind: str) -> Callable[[], None]:
        dst, pkt = mpls_over_udp(t, rnd)

        def send() -> None:
            sock.sendto(pkt, (dst, 0))

        return send

    try:
        pacer.run(["mpls_over_udp"], make, until)
    finally:
        sock.close()
    return pacer.report()


def main() -> int:
    role, cfg = sys.argv[1], json.loads(sys.argv[2])
    t = Targets.loads(json.dumps(cfg["targets"]))
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    t0 = time.monotonic()
    out = vm(cfg, t, stop) if role == "vm" else fabric(cfg, t, stop)
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
