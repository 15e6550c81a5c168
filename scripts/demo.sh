#!/usr/bin/env bash
# The demo behind `make demo`: an emulated compute node with 2 VMs, each VM reading its own
# metadata through the vRouter's metadata trap, then the flow table with the NAT flows.
# Usage: scripts/demo.sh [PREFIX] [keep]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-demo}
KEEP=${2:-}
SETUP=scripts/netns_setup.sh
VROUTER=.venv/bin/vrouter
[ "$(id -u)" = 0 ] || { echo "make demo needs root (it builds network namespaces)" >&2; exit 1; }

if [ -z "$KEEP" ]; then
    trap 'echo; echo "== cleaning up"; $SETUP down --prefix $PREFIX' EXIT
fi
step() { printf '\n== %s\n' "$*"; }

step "building the emulated compute node (namespaces $PREFIX-compute, $PREFIX-fabric, $PREFIX-vm1, $PREFIX-vm2)"
$SETUP up --vms 2 --prefix "$PREFIX"
LAYOUT=/run/vrouter/$PREFIX/layout.json

for i in 1 2; do
    read -r name ip inst < <(.venv/bin/python -c 'import json,sys; v=json.load(open(sys.argv[1]))["vms"][int(sys.argv[2])]; print(v["name"], v["ip"], v["instance_uuid"])' "$LAYOUT" $((i - 1)))
    step "$name ($ip, instance $inst): curl http://169.254.169.254/openstack/latest/meta_data.json"
    ip netns exec "$PREFIX-vm$i" curl -sS -m 10 http://169.254.169.254/openstack/latest/meta_data.json \
        | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("uuid","name","hostname","project_id","public_keys")}, indent=2))'
    step "$name: curl http://169.254.169.254/latest/meta-data/local-ipv4 (EC2 API)"
    ip netns exec "$PREFIX-vm$i" curl -sS -m 10 http://169.254.169.254/latest/meta-data/local-ipv4; echo
done

step "vm1 pings vm2 through the dataplane"
ip netns exec "$PREFIX-vm1" ping -c 2 -W 2 "$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vms"][1]["ip"])' "$LAYOUT")" | tail -2

step "each VM holds a metadata connection open (keep-alive), so that its NAT pair stays in the table"
HOLD='import socket, time
s = socket.create_connection(("169.254.169.254", 80), timeout=5)
s.sendall(b"GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
print("  %s:%d -> 169.254.169.254:80 answered %s" % (s.getsockname() + (s.recv(12).decode()[9:12],)), flush=True)
time.sleep(4)'
for i in 1 2; do ip netns exec "$PREFIX-vm$i" .venv/bin/python -c "$HOLD" & done
sleep 1  # a demo, not a test: give the two connections a moment to be made

step "vrouter flow -l --prefix $PREFIX (the metadata NAT pairs and the VM-to-VM Forward pair)"
$VROUTER flow -l --prefix "$PREFIX"
wait

step "vrouter vif --list --prefix $PREFIX"
$VROUTER vif --list --prefix "$PREFIX"

if [ -n "$KEEP" ]; then
    printf '\nThe node stays up. Try: ip netns exec %s-vm1 curl http://169.254.169.254/openstack\n' "$PREFIX"
    printf 'Remove everything with: scripts/netns_setup.sh down --prefix %s\n' "$PREFIX"
fi
