"""Flow table costs with 1K and with 400K live flows, in one run, beside a Python dict.

    .venv/bin/python benchmarks/flow_table.py [--repeat N]

Measures, on the default-size table (524,288 entries + 20% overflow, 128-byte records):
  * its memory (the shared-memory file's size);
  * a lookup (hit) of a live flow: FlowTable.lookup, and a dict lookup of the same key bytes
    (the reference: what a table without the vRouter's layout would cost); keys are drawn from
    all live flows, so at 400K they also miss the CPU caches, as the dict's do;
  * a lookup (hit) among the same 1,000 flows at both sizes: the layout's own cost (overflow
    chains), without the cache effect of a larger working set;
  * a miss;
  * a flow setup (a forward/reverse pair) and its removal;
  * the dataplane's whole per-packet path for a packet of a live flow (parse, key, lookup,
    counters, verdict), Dataplane.process.
Costs are per operation, the best of --repeat runs; the ratios 400K/1K are what the table's
layout promises to keep near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dataplane.forwarding import Dataplane  # noqa: E402
from dataplane.vif import Vif  # noqa: E402
from flows.layout import Action, make_key  # noqa: E402
from flows.table import DEFAULT_ENTRIES, DEFAULT_OVERFLOW, FlowSpec, FlowTable, table_size  # noqa: E402

SPEC = FlowSpec(Action.FORWARD, vrf=1, dvrf=1, vif=3)


def keys(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    out = []
    seen = set()
    while len(out) < n:
        a = struct.pack("!I", 0x0A000000 | rnd.getrandbits(24))
        b = struct.pack("!I", 0x0A000000 | rnd.getrandbits(24))
        sp, dp = rnd.randrange(1024, 65536), rnd.choice((80, 443, 53, 22))
        k = make_key(3, a, b, 6, sp, dp)
        if k in seen:
            continue
        seen.add(k)
        out.append((k, make_key(4, b, a, 6, dp, sp)))
    return out


def per_op(fn, items, repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return best


def measure(live: int, repeat: int) -> dict:
    table = FlowTable.in_memory(DEFAULT_ENTRIES, DEFAULT_OVERFLOW)
    pairs = keys(live // 2 + 2000, seed=live)
    base, extra = pairs[: live // 2], pairs[live // 2 :]
    ref: dict[bytes, int] = {}
    for fk, rk in base:
        fi, ri = table.add_pair(fk, SPEC, rk, SPEC)
        ref[fk], ref[rk] = fi, ri
    probe = [k for pair in random.Random(1).sample(base, min(len(base), 20000)) for k in pair]
    misses = [fk for fk, _ in extra]
    # the same working set at both sizes: 1,000 keys (500 live pairs), each probed 20 times in a
    # random order; what is left of the ratio is the layout's (overflow chains), not the caches'
    hot = [k for pair in random.Random(2).sample(base, min(len(base), 500)) for k in pair] * 20
    random.Random(3).shuffle(hot)
    res = {
        "live_flows": table.active,
        "overflow_used": table.overflow - len(table._free_overflow),
        "lookup_ns": per_op(table.lookup, probe, repeat) * 1e9,
        "dict_lookup_ns": per_op(ref.__getitem__, probe, repeat) * 1e9,
        "lookup_same_set_ns": per_op(table.lookup, hot, repeat) * 1e9,
        "miss_ns": per_op(table.lookup, misses, repeat) * 1e9,
    }
    # setup and removal of 2000 pairs at this occupancy
    best_setup = best_delete = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        idx = [table.add_pair(fk, SPEC, rk, SPEC)[0] for fk, rk in extra]
        t1 = time.perf_counter()
        for i in idx:
            table.delete(i)
        t2 = time.perf_counter()
        best_setup = min(best_setup, (t1 - t0) / len(extra))
        best_delete = min(best_delete, (t2 - t1) / len(extra))
    res["setup_ns"] = best_setup * 1e9
    res["delete_ns"] = best_delete * 1e9
    # the whole per-packet path for live flows (the dataplane over the same table)
    dp = Dataplane(table, "10.10.0.2")
    dp.add_vif(Vif(3, "tap3", 3, "10.1.1.3", "02:00:00:00:00:03", vrf=1))
    dp.add_vif(Vif(4, "tap4", 4, "10.1.1.4", "02:00:00:00:00:04", vrf=1))
    pkts = []
    for n in range(2000):
        sport = 20000 + n
        raw = bytearray(40)
        struct.pack_into("!BBHHHBBH4s4s", raw, 0, 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton("10.1.1.3"),
                         socket.inet_aton("10.1.1.4"))  # fmt: skip
        struct.pack_into("!HHIIBBHHH", raw, 20, sport, 80, 0, 0, 0x50, 0x10, 512, 0, 0)
        pkts.append(bytes(raw))
        dp.process(pkts[-1], 3)  # sets the flow up
    res["packet_ns"] = per_op(lambda p: dp.process(p, 3), pkts, repeat) * 1e9
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "flow_table.json"))
    args = ap.parse_args()
    size = table_size(DEFAULT_ENTRIES, DEFAULT_OVERFLOW)
    small = measure(1000, args.repeat)
    large = measure(400_000, args.repeat)
    rows = [
        ("lookup (hit)", "lookup_ns"),
        ("dict lookup, reference", "dict_lookup_ns"),
        ("lookup, same 1,000 flows", "lookup_same_set_ns"),
        ("lookup (miss)", "miss_ns"),
        ("flow setup (pair)", "setup_ns"),
        ("flow removal (pair)", "delete_ns"),
        ("per-packet path (hit)", "packet_ns"),
    ]
    print("default table: %d + %d entries x 128 B = %d bytes (%.1f MiB)" % (DEFAULT_ENTRIES, DEFAULT_OVERFLOW, size, size / 2**20))
    print("live flows: %d and %d (overflow entries in use at 400K: %d)" % (small["live_flows"], large["live_flows"], large["overflow_used"]))
    print()
    print("%-26s %12s %12s %14s" % ("operation (ns, best of %d)" % args.repeat, "1K flows", "400K flows", "400K/1K ratio"))
    for name, k in rows:
        print("%-26s %12.0f %12.0f %14.2f" % (name, small[k], large[k], large[k] / small[k]))
    print()
    r1, r4 = small["lookup_ns"] / small["dict_lookup_ns"], large["lookup_ns"] / large["dict_lookup_ns"]
    print("table lookup / dict lookup: %.1fx at 1K, %.1fx at 400K" % (r1, r4))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"table_bytes": size, "1k": small, "400k": large}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
