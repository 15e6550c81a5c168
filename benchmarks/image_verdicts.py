"""How long a boot takes to its verdict: first boots with the metadata service and with a config drive
only, then a soft reboot, a hard reboot and a rebuild of the first guest, one guest at a time.

    .venv/bin/python benchmarks/image_verdicts.py [--image build/guest/debian12.qcow2] [--timeout 900]

As root (network namespaces); it builds a node of its own and removes it.  Prints one line a boot:
its verdict and the seconds from power-on to the lease, the first metadata request, each stage's
end, cloud-init's end and the verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from vrouter_lab.api import Lab, Verdict

USER_DATA = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo ran > /var/tmp/ran']\n"
REBUILT = "#!/bin/sh\necho rebuilt > /var/tmp/marker\n"
COLUMNS = ("lease", "first_metadata", "init-local", "init-network", "modules-config", "modules-final", "finished", "waited")


def line(kind: str, v: Verdict, note: str = "") -> str:
    t = v.report["timings"]
    cells = ["%.1f" % t[k] if t.get(k) is not None else "-" for k in COLUMNS]
    return "| %s | %s (%d) | %s |%s" % (kind, v.status, v.exit_code, " | ".join(cells), " " + note if note else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="build/guest/debian12.qcow2")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("image_verdicts.py: needs root (network namespaces)")
    print("| boot | verdict | " + " | ".join(COLUMNS) + " |", flush=True)
    with Lab.up(say=lambda _: None) as lab:
        for mode in ("none", "only"):
            g = lab.boot(args.image, user_data=USER_DATA, config_drive=mode)
            print(line("first, config drive " + mode, g.wait_for_cloud_init(args.timeout)), flush=True)
            if mode == "none":
                t0 = time.monotonic()
                g.reboot()
                off = time.monotonic() - t0
                print(line("soft reboot", g.wait_for_cloud_init(args.timeout), "(power off and on: %.1f s)" % off), flush=True)
                g.reboot(hard=True)
                print(line("hard reboot", g.wait_for_cloud_init(args.timeout)), flush=True)
                g.rebuild(user_data=REBUILT)
                print(line("rebuild", g.wait_for_cloud_init(args.timeout)), flush=True)
            g.remove()
            lab.booted.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
