#!/usr/bin/env bash
# The demo behind `make demo`: an emulated compute node with 2 VMs, each VM reading its own
# metadata through the vRouter's metadata trap, then the flow table with the NAT flows.
# With `guest` (make demo GUEST=1): a node with one namespace VM, then `vrouter-lab check` boots
# the Debian cloud image as a QEMU guest (metadata service and config drive) and gives its
# verdict; the demo shows what cloud-init did, from the console and from inside the guest over SSH.
# With `nodes` (make demo NODES=1): a cloud of three compute nodes configured through etcd, a VM
# on each reading its own metadata and pinging the others over MPLS over UDP, a link-local service
# added on node 1 that node 3 has at once, and the vRouter's rt, nh and mpls tools.
# DATAPATH=ebpf (make demo DATAPATH=ebpf) runs the node(s) with the kernel datapath.
# Usage: scripts/demo.sh [PREFIX] [keep] [guest] [nodes]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-demo}
KEEP=""
GUEST=""
NODES=""
for a in "${@:2}"; do
    case "$a" in keep) KEEP=1 ;; guest) GUEST=1 ;; nodes) NODES=1 ;; "") ;; *) echo "demo.sh: unknown argument $a" >&2; exit 2 ;; esac
done
DATAPATH=${DATAPATH:-nfqueue}
SETUP="scripts/netns_setup.sh"
VROUTER=.venv/bin/vrouter
LAB=.venv/bin/vrouter-lab
PY=.venv/bin/python
IMAGE=build/guest/debian12.qcow2
[ "$(id -u)" = 0 ] || { echo "make demo needs root (it builds network namespaces)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/vrouter-demo.XXXXXX)
cleanup() {
    rm -rf "$TMP"
    if [ -z "$KEEP" ]; then echo; echo "== cleaning up"; $SETUP down --prefix "$PREFIX"; fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
field() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$LAYOUT" "$1"; }

if [ -n "$GUEST" ]; then
    [ -f "$IMAGE" ] || { echo "no guest image: make demo GUEST=1 builds it (make guest-image)" >&2; exit 1; }
    ssh-keygen -q -t ed25519 -N "" -C "demo@$PREFIX" -f "$TMP/id"
    cat >"$TMP/user-data" <<'EOF'
#!/bin/sh
# the demo's user data: cloud-init runs it once, as root, at the end of the first boot
echo "user data ran on $(hostname) at $(date -u +%H:%M:%S) UTC" >/var/tmp/user-data-result
EOF
    step "building the node: namespaces $PREFIX-compute, $PREFIX-fabric, $PREFIX-vm1"
    $SETUP up --datapath "$DATAPATH" --vms 1 --prefix "$PREFIX"
    LAYOUT=/run/vrouter/$PREFIX/layout.json
    step "vrouter-lab check: a QEMU guest on a tap boots the image, with the metadata service and Nova's config drive; the verdict (under TCG this takes 2-4 minutes)"
    rc=0
    $LAB check "$IMAGE" --prefix "$PREFIX" --config-drive both --ssh-key "$TMP/id.pub" --user-data "$TMP/user-data" \
        --json "$TMP/report.json" --junit "$TMP/junit.xml" --keep || rc=$?
    printf '(exit %d: 0 pass, 1 fail, 2 degraded, 3 could not start; the JUnit file has %s test cases)\n' "$rc" "$(grep -c "<testcase" "$TMP/junit.xml")"
    CONSOLE=$(field 'd["guests"][0]["console"]')
    GIP=$(field 'd["guests"][0]["ip"]')
    step "what cloud-init said on the console ($CONSOLE)"
    grep -a -E "Cloud-init v.*(running|finished)|DataSource|ci-info: \| +eth0|OpenStack" "$CONSOLE" | tr -d '\r' | sed -n 1,12p  # (sed reads to the end: head's early exit fails a pipe under pipefail)
    step "what the instance asked the metadata service (vrouter metadata log): with a config drive, nothing but the lab's mark"
    $VROUTER metadata log --prefix "$PREFIX" | sed -n 1,12p
    step "inside the guest, over SSH from $PREFIX-vm1 (VM to VM through the dataplane), with the key the metadata gave it"
    SSH=(ip netns exec "$PREFIX-vm1" ssh -i "$TMP/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
        -o ConnectTimeout=10 "debian@$GIP")
    "${SSH[@]}" 'echo "hostname: $(hostname)"; echo "datasource: $(cloud-init query platform 2>/dev/null) ($(cloud-init query subplatform 2>/dev/null))";
        echo "instance id: $(cloud-init query instance-id 2>/dev/null)"; echo "ssh key: $(cut -c1-60 ~/.ssh/authorized_keys)...";
        echo "user data: $(cat /var/tmp/user-data-result)"; cloud-init status --long | sed -n "1,3p"'
    step "vrouter flow -l --prefix $PREFIX (the guest's metadata, DHCP and SSH flows)"
    FLOWS=$($VROUTER flow -l --prefix "$PREFIX")  # (not piped to head: under pipefail its early exit fails the demo)
    sed -n 1,40p <<<"$FLOWS"
    if [ -n "$KEEP" ]; then
        printf '\nThe node and the guest stay up. Its console: %s; reboot it: %s guest reboot guest1 --prefix %s\n' "$CONSOLE" "$LAB" "$PREFIX"
        printf 'Remove everything with: scripts/netns_setup.sh down --prefix %s\n' "$PREFIX"
    fi
    exit 0
fi

if [ -n "$NODES" ]; then
    step "building a cloud: compute nodes $PREFIX-compute1..3 on one fabric, etcd and Nova in $PREFIX-fabric, a VM on each node"
    $SETUP up --datapath "$DATAPATH" --nodes 3 --vms 3 --prefix "$PREFIX"
    LAYOUT=/run/vrouter/$PREFIX/layout.json
    for i in 1 2 3; do
        read -r name ip node < <(field "' '.join(str(d['vms'][$((i - 1))][k]) for k in ('name', 'ip', 'node'))")
        step "$name ($ip, on node $node): its own metadata, and a ping to the VMs of the other nodes"
        printf '  hostname from the metadata service: %s\n' "$(ip netns exec "$PREFIX-vm$i" curl -sS -m 10 http://169.254.169.254/latest/meta-data/hostname)"
        for j in 1 2 3; do
            [ "$i" = "$j" ] && continue
            dst=$(field "d['vms'][$((j - 1))]['ip']")
            printf '  ping vm%s %s: %s\n' "$j" "$dst" "$(ip netns exec "$PREFIX-vm$i" ping -c 2 -W 2 "$dst" | grep -o '[0-9]*% packet loss')"
        done
    done
    step "vrouter rt --dump 1 --prefix $PREFIX --node 1 (vm1 here; vm2 and vm3 through tunnels, with the labels their nodes gave them)"
    $VROUTER rt --dump 1 --prefix "$PREFIX" --node 1
    step "vrouter nh --list --prefix $PREFIX --node 1 (the tunnels: MPLS over UDP to the other nodes' vhost0)"
    $VROUTER nh --list --prefix "$PREFIX" --node 1 | grep -A3 Tunnel
    step "vrouter mpls --dump --prefix $PREFIX --node 2"
    $VROUTER mpls --dump --prefix "$PREFIX" --node 2
    step "a link-local service added on node 1 goes to etcd; node 3 has it"
    $VROUTER linklocal add --prefix "$PREFIX" --node 1 --name ntp --ip 169.254.10.123 --port 123 --fabric-ip 10.10.0.1 --fabric-port 123
    for _ in $(seq 50); do $VROUTER linklocal list --prefix "$PREFIX" --node 3 | grep -q ntp && break; sleep 0.1; done  # a demo waiting, with a bound
    $VROUTER linklocal list --prefix "$PREFIX" --node 3
    step "status of node 3's link to the cloud"
    $VROUTER status --prefix "$PREFIX" --node 3 | grep cluster
    if [ -n "$KEEP" ]; then
        printf '\nThe cloud stays up. Try: ip netns exec %s-compute2 .venv/bin/vrouter flow -l\n' "$PREFIX"
        printf 'Remove everything with: scripts/netns_setup.sh down --prefix %s\n' "$PREFIX"
    fi
    exit 0
fi

step "building the emulated compute node (namespaces $PREFIX-compute, $PREFIX-fabric, $PREFIX-vm1, $PREFIX-vm2)"
$SETUP up --datapath "$DATAPATH" --vms 2 --prefix "$PREFIX" --ipv6 dhcpv6-stateful
LAYOUT=/run/vrouter/$PREFIX/layout.json

for i in 1 2; do
    read -r name ip inst < <(field "' '.join(d['vms'][$((i - 1))][k] for k in ('name', 'ip', 'instance_uuid'))")
    step "$name ($ip, instance $inst): curl http://169.254.169.254/openstack/latest/meta_data.json"
    ip netns exec "$PREFIX-vm$i" curl -sS -m 10 http://169.254.169.254/openstack/latest/meta_data.json \
        | $PY -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("uuid","name","hostname","project_id","public_keys")}, indent=2))'
    step "$name: curl http://169.254.169.254/latest/meta-data/local-ipv4 (EC2 API)"
    ip netns exec "$PREFIX-vm$i" curl -sS -m 10 http://169.254.169.254/latest/meta-data/local-ipv4; echo
done

step "vm1 pings vm2 through the dataplane"
ip netns exec "$PREFIX-vm1" ping -c 2 -W 2 "$(field 'd["vms"][1]["ip"]')" | tail -2

step "dual stack: vm1's IPv6 address came from the agent's DHCPv6 (dhclient -6); it pings vm2 over IPv6"
ip netns exec "$PREFIX-vm1" ip -6 -o addr show dev eth0 scope global | awk '{print "  " $4}'
ip netns exec "$PREFIX-vm1" ping -6 -c 2 -W 2 "$(field 'd["vms"][1]["ipv6"]')" | tail -2

step "each VM holds a metadata connection open (keep-alive), so that its NAT pair stays in the table"
HOLD='import socket, time
s = socket.create_connection(("169.254.169.254", 80), timeout=5)
s.sendall(b"GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
print("  %s:%d -> 169.254.169.254:80 answered %s" % (s.getsockname() + (s.recv(12).decode()[9:12],)), flush=True)
time.sleep(4)'
for i in 1 2; do ip netns exec "$PREFIX-vm$i" $PY -c "$HOLD" & done
sleep 1  # a demo, not a test: give the two connections a moment to be made

step "vrouter flow -l --prefix $PREFIX (the metadata NAT pairs and the VM-to-VM Forward pair)"
$VROUTER flow -l --prefix "$PREFIX"
wait

step "vrouter vif --list --prefix $PREFIX"
$VROUTER vif --list --prefix "$PREFIX"

INST1=$(field 'd["vms"][0]["instance_uuid"]')
step "a fault for vm1 only: its next 2 meta_data.json requests answer 503; vm2 is served as usual"
$VROUTER metadata fault add --prefix "$PREFIX" --instance "$INST1" --path '/openstack/*/meta_data.json' --status 503 --count 2
for i in 1 2 1 1; do
    printf '  vm%s: %s\n' "$i" "$(ip netns exec "$PREFIX-vm$i" curl -s -o /dev/null -w '%{http_code}' -m 10 http://169.254.169.254/openstack/latest/meta_data.json)"
done

step "live metadata: vrouter instance set changes vm1's user data; its next request sees it"
printf '#cloud-config\nhostname: changed-live\n' > "$TMP/new-user-data"
$VROUTER instance set --prefix "$PREFIX" --uuid "$INST1" --user-data "$TMP/new-user-data"
ip netns exec "$PREFIX-vm1" curl -sS -m 10 http://169.254.169.254/openstack/latest/user_data | sed 's/^/  /'

step "vrouter metadata log --prefix $PREFIX --instance $INST1 (what vm1 asked for and got)"
$VROUTER metadata log --prefix "$PREFIX" --instance "$INST1"

INTROSPECT=$(field 'd["introspect"]')
step "the agent's introspect ($INTROSPECT, from the fabric as TF's tools read it): the interfaces and their metadata IPs"
PAGE=$(ip netns exec "$PREFIX-fabric" curl -sS -m 10 "${INTROSPECT}Snh_ItfReq")  # (not piped to head: pipefail)
printf '%s ...\n' "${PAGE:0:300}"
$VROUTER introspect --prefix "$PREFIX" Snh_ItfReq --columns index,name,vm_name,ip_addr,mdata_ip_addr
step "... and its Metadata trace buffer"
$VROUTER introspect --prefix "$PREFIX" 'Snh_SandeshTraceRequest?x=Metadata' | tail -4

if [ -n "$KEEP" ]; then
    printf '\nThe node stays up. Try: ip netns exec %s-vm1 curl http://169.254.169.254/openstack\n' "$PREFIX"
    printf 'Remove everything with: scripts/netns_setup.sh down --prefix %s\n' "$PREFIX"
fi
