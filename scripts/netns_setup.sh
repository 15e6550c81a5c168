#!/usr/bin/env bash
# Build or remove an emulated Tungsten Fabric compute node in network namespaces.
#
#   netns_setup.sh up [--vms N] [--prefix P] [--secret S] [--tls] [--json]
#   netns_setup.sh down [--prefix P]
#   netns_setup.sh status [--prefix P]
#   netns_setup.sh stop-agent|start-agent|stop-nova|start-nova [--prefix P]
#
# `up` creates namespaces P-compute, P-fabric and P-vm1..P-vmN (default prefix vr), one veth per VM
# (compute side named tap + the first 11 characters of the port uuid, VM side eth0), and vhost0
# from the compute namespace to the fabric. It starts `vrouter nova-metadata` in the fabric
# namespace (10.10.0.1:8775) and `vrouter agent` in the compute namespace (vhost0 10.10.0.2), plugs
# every VM's port with `vrouter port add` and provisions the `metadata` link-local service
# (169.254.169.254:80 -> 10.10.0.1:8775) with `vrouter linklocal add`, as a user would.
#
# --tls makes a CA, a server certificate for Nova and a client certificate for the agent (openssl,
# in /run/vrouter/P/tls); Nova then serves HTTPS and requires the client certificate, and the
# agent's proxy speaks HTTPS to it (metadata_use_ssl). The compute namespace resolves the fabric
# name `nova.fabric` (/etc/netns/P-compute/hosts), for services given by DNS name.
#
# Everything it creates is listed in /run/vrouter/P/created, and the layout (namespaces; per VM ip,
# mac, tap, port uuid, instance uuid, project id, metadata IP; Nova's address; the shared secret) is
# written to /run/vrouter/P/layout.json. `down` removes exactly what `up` created.
#
# start-agent passes $VROUTER_AGENT_ARGS to `vrouter agent` (e.g. "--nova-timeout 2").
#
# Nothing here touches the host's own interfaces, routes or firewall: all of it lives inside the
# namespaces this script creates. Needs root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VROUTER=${VROUTER:-$HERE/.venv/bin/vrouter}
PYTHON=${PYTHON:-$HERE/.venv/bin/python}
STATE_ROOT=${VROUTER_STATE_ROOT:-/run/vrouter}

FABRIC_NET=10.10.0
VM_NET=10.1.1
NOVA_PORT=8775

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

die() { echo "netns_setup.sh: $*" >&2; exit 1; }

CMD=${1:-}
[ -n "$CMD" ] || usage
shift
PREFIX=vr
VMS=2
JSON=0
SECRET=""
SECRET_SET=0
TLS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --vms) VMS=${2:?--vms needs a number}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a name}; shift 2 ;;
        --secret) SECRET=${2-}; SECRET_SET=1; shift 2 ;;
        --json) JSON=1; shift ;;
        --tls) TLS=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "netns_setup.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$VMS" =~ ^[0-9]+$ ]] && [ "$VMS" -ge 1 ] && [ "$VMS" -le 200 ] || die "--vms $VMS: a number from 1 to 200"
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--prefix $PREFIX: 1 to 8 lowercase letters and digits, starting with a letter"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

STATE=$STATE_ROOT/$PREFIX
CREATED=$STATE/created
LAYOUT=$STATE/layout.json
COMPUTE=$PREFIX-compute
FABRIC=$PREFIX-fabric

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

wait_for() {  # wait_for SECONDS PIDFILE DESCRIPTION COMMAND...: poll a condition with a deadline
    local deadline=$(( $(date +%s) + $1 )) pidfile=$2 what=$3
    shift 3
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        pid_alive "$pidfile" || return 1  # it died: no use waiting
        sleep 0.1
    done
    echo "  $what" >&2
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local f=$1 name=$2 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "  $name (pid $pid) did not stop in 10 s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "  stopped $name (pid $pid)" >&2
    fi
    rm -f "$f"
}

start_nova() {
    pid_alive "$STATE/nova.pid" && { echo "  nova-metadata already running" >&2; return 0; }
    local tls=()
    if [ -f "$STATE/tls/nova.pem" ]; then
        tls=(--tls-cert "$STATE/tls/nova.pem" --tls-key "$STATE/tls/nova.key" --tls-client-ca "$STATE/tls/ca.pem")
    fi
    ip netns exec "$FABRIC" "$VROUTER" nova-metadata --instances "$STATE/instances.json" \
        --listen "$FABRIC_NET.1" --port "$NOVA_PORT" --secret-file "$STATE/secret" "${tls[@]}" \
        </dev/null >>"$STATE/nova.log" 2>&1 &
    echo $! >"$STATE/nova.pid"
    wait_for 15 "$STATE/nova.pid" "nova-metadata listening on $FABRIC_NET.1:$NOVA_PORT (pid $(cat "$STATE/nova.pid"))" \
        ip netns exec "$FABRIC" bash -c "exec 3<>/dev/tcp/$FABRIC_NET.1/$NOVA_PORT" \
        || { tail -n 15 "$STATE/nova.log" >&2; die "nova-metadata did not start (its log is above)"; }
}

start_agent() {
    pid_alive "$STATE/agent.pid.sh" && { echo "  agent already running" >&2; return 0; }
    # shellcheck disable=SC2086  # VROUTER_AGENT_ARGS: extra options, word-split on purpose
    ip netns exec "$COMPUTE" "$VROUTER" agent --config "$STATE/agent.conf" --state-dir "$STATE" ${VROUTER_AGENT_ARGS:-} \
        </dev/null >>"$STATE/agent.log" 2>&1 &
    echo $! >"$STATE/agent.pid.sh"
    wait_for 20 "$STATE/agent.pid.sh" "vrouter agent up (pid $(cat "$STATE/agent.pid.sh"))" "$VROUTER" status --state-dir "$STATE" \
        || { tail -n 15 "$STATE/agent.log" >&2; die "the agent did not start (its log is above)"; }
}

stop_agent() { stop_pidfile "$STATE/agent.pid.sh" "vrouter agent"; }

make_tls() {  # a throw-away CA, Nova's server certificate (IP and DNS names) and the agent's client one
    local d=$STATE/tls
    mkdir -p "$d"
    chmod 700 "$d"
    command -v openssl >/dev/null || die "--tls needs openssl"
    local key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${key[@]}" -days 7 -subj "/CN=vrouter-emulator CA $PREFIX" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req "${key[@]}" -subj "/CN=nova-metadata" -keyout "$d/nova.key" -out "$d/nova.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s,DNS:nova.fabric\nextendedKeyUsage=serverAuth\n' "$FABRIC_NET.1" >"$d/nova.ext"
    openssl x509 -req -in "$d/nova.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 7 \
        -extfile "$d/nova.ext" -out "$d/nova.pem" 2>/dev/null
    openssl req "${key[@]}" -subj "/CN=vrouter-agent $PREFIX" -keyout "$d/agent.key" -out "$d/agent.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$d/agent.ext"
    openssl x509 -req -in "$d/agent.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 7 \
        -extfile "$d/agent.ext" -out "$d/agent.pem" 2>/dev/null
    echo "  TLS: CA, Nova and agent certificates in $d" >&2
}

cmd_up() {
    if ns_exists "$COMPUTE" || [ -f "$CREATED" ]; then
        echo "prefix $PREFIX is already up (namespace $COMPUTE exists); run: $0 down --prefix $PREFIX" >&2
        [ "$JSON" = 1 ] && [ -f "$LAYOUT" ] && cat "$LAYOUT"
        return 0
    fi
    [ -x "$VROUTER" ] || die "$VROUTER not found: run make install (or set VROUTER=/path/to/vrouter)"
    local root_new=0
    [ -d "$STATE_ROOT" ] || root_new=1
    mkdir -p "$STATE"
    : >"$CREATED"
    # parent directories that did not exist are ours too: removed at down when empty
    [ "$root_new" = 1 ] && echo "rootdir $STATE_ROOT" >>"$CREATED"
    UP_DONE=0
    trap 'if [ "$UP_DONE" = 0 ]; then echo "netns_setup.sh: up failed; removing what it created" >&2; cmd_down >/dev/null 2>&1 || true; fi' EXIT
    if [ "$SECRET_SET" = 0 ]; then SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'); fi
    printf '%s' "$SECRET" >"$STATE/secret"
    chmod 600 "$STATE/secret"

    echo "building emulated compute node '$PREFIX' with $VMS VMs" >&2
    for ns in "$COMPUTE" "$FABRIC"; do
        ip netns add "$ns"; echo "netns $ns" >>"$CREATED"
        ip -n "$ns" link set lo up
    done
    # The compute namespace's own resolver file: fabric names for services given by DNS name.
    [ -d /etc/netns ] || echo "dir /etc/netns" >>"$CREATED"
    mkdir -p "/etc/netns/$COMPUTE"; echo "dir /etc/netns/$COMPUTE" >>"$CREATED"
    printf '127.0.0.1 localhost\n%s nova.fabric fabric\n' "$FABRIC_NET.1" >"/etc/netns/$COMPUTE/hosts"
    echo "file /etc/netns/$COMPUTE/hosts" >>"$CREATED"
    ip link add vhost0 netns "$COMPUTE" type veth peer name eth0 netns "$FABRIC"
    ip -n "$COMPUTE" addr add "$FABRIC_NET.2/24" dev vhost0
    ip -n "$COMPUTE" link set vhost0 up
    ip -n "$FABRIC" addr add "$FABRIC_NET.1/24" dev eth0
    ip -n "$FABRIC" link set eth0 up
    ip -n "$COMPUTE" route add default via "$FABRIC_NET.1"
    # Forwarding stays off until the agent runs; strict reverse-path filtering on: fail closed.
    ip netns exec "$COMPUTE" sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1

    # The VMs, their ports and Nova's instance records, generated together.
    "$PYTHON" - "$PREFIX" "$VMS" "$VM_NET" "$FABRIC_NET.1:$NOVA_PORT" "$STATE" <<'PY'
import json, sys, uuid
prefix, vms, net, nova, state = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
project = uuid.uuid4()
vn = uuid.uuid4()
out, instances = [], []
for i in range(1, vms + 1):
    port, inst = uuid.uuid4(), uuid.uuid4()
    host = i + 2
    vm = {
        "name": "vm%d" % i, "namespace": "%s-vm%d" % (prefix, i), "ip": "%s.%d" % (net, host),
        "mac": "02:00:0a:01:%02x:%02x" % (host >> 8, host & 0xFF), "tap": "tap" + str(port)[:11],
        "port_uuid": str(port), "instance_uuid": str(inst), "project_id": str(project), "vn_uuid": str(vn),
        "gateway": net + ".1", "prefix_len": 24, "ipv6": "fd00:10:1:1::%x" % host,
    }
    out.append(vm)
    instances.append({
        "uuid": str(inst), "name": vm["name"], "hostname": vm["name"], "project_id": project.hex,
        "availability_zone": "nova", "launch_index": 0, "instance_type": "m1.small",
        "public_keys": {"demo": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyFor%sOnly%s demo@%s" % (vm["name"], prefix, prefix)},
        "user_data": "#cloud-config\nhostname: %s\n" % vm["name"], "meta": {"role": "demo"},
        "ip": vm["ip"], "mac": vm["mac"], "port_uuid": str(port), "vn_uuid": str(vn),
        "gateway": vm["gateway"], "netmask": "255.255.255.0", "security_groups": ["default"],
    })
json.dump({"vms": out}, open(state + "/vms.json", "w"), indent=2)
json.dump({"instances": instances}, open(state + "/instances.json", "w"), indent=2)
PY
    local ns tap ip mac ip6
    while read -r ns tap ip mac ip6; do
        ip netns add "$ns"; echo "netns $ns" >>"$CREATED"
        ip link add "$tap" netns "$COMPUTE" type veth peer name eth0 netns "$ns"
        ip -n "$ns" link set lo up
        # no duplicate address detection: the VM's IPv6 link-local address is usable at once
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
        ip -n "$ns" link set eth0 address "$mac" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" -6 addr add "$ip6/64" dev eth0 nodad
        ip -n "$ns" route add default via "$VM_NET.1"
    done < <("$PYTHON" -c 'import json,sys; [print(v["namespace"], v["tap"], v["ip"], v["mac"], v["ipv6"]) for v in json.load(open(sys.argv[1]))["vms"]]' "$STATE/vms.json")

    local ssl_conf="metadata_use_ssl = false"
    if [ "$TLS" = 1 ]; then
        make_tls
        ssl_conf="metadata_use_ssl = true
metadata_ca_cert = $STATE/tls/ca.pem
metadata_client_cert = $STATE/tls/agent.pem
metadata_client_key = $STATE/tls/agent.key"
    fi
    cat >"$STATE/agent.conf" <<EOF
# Written by netns_setup.sh for prefix $PREFIX
[DEFAULT]
log_level = SYS_INFO

[VIRTUAL-HOST-INTERFACE]
name = vhost0
ip = $FABRIC_NET.2/24
gateway = $FABRIC_NET.1

[METADATA]
metadata_proxy_secret = $SECRET
metadata_proxy_port = 8097
$ssl_conf

[FLOWS]
flow_cache_timeout = 180
EOF
    start_nova
    start_agent
    while read -r args; do
        # shellcheck disable=SC2086
        "$VROUTER" port add --state-dir "$STATE" $args >&2
    done < <("$PYTHON" -c '
import json, sys
for v in json.load(open(sys.argv[1]))["vms"]:
    print("--uuid %(port_uuid)s --instance-uuid %(instance_uuid)s --vn-uuid %(vn_uuid)s --vm-project-uuid %(project_id)s "
          "--ip-address %(ip)s --ipv6-address %(ipv6)s --mac %(mac)s --tap-name %(tap)s --vm-name %(name)s" % v)' "$STATE/vms.json")
    "$VROUTER" linklocal add --state-dir "$STATE" --linklocal_service_name metadata \
        --linklocal_service_ip 169.254.169.254 --linklocal_service_port 80 \
        --ipfabric_service_ip "$FABRIC_NET.1" --ipfabric_service_port "$NOVA_PORT" >&2

    "$PYTHON" - "$STATE" "$PREFIX" "$FABRIC_NET" "$NOVA_PORT" "$TLS" <<'PY'
import json, os, sys
state, prefix, fabric, nova_port, tls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
vms = json.load(open(state + "/vms.json"))["vms"]
import os
for v in vms:
    port = json.load(open(os.path.join(state, "ports", v["port_uuid"] + ".json")))
    v["vif"] = port["vif"]
    v["metadata_ip"] = port["metadata_ip"]
    v["metadata_ip6"] = port["metadata_ip6"]
layout = {
    "prefix": prefix,
    "state_dir": state,
    "namespaces": {"compute": prefix + "-compute", "fabric": prefix + "-fabric", "vms": [v["namespace"] for v in vms]},
    "vhost0": {"ip": fabric + ".2", "namespace": prefix + "-compute"},
    "nova": {"ip": fabric + ".1", "port": nova_port, "namespace": prefix + "-fabric",
             "url": "%s://%s.1:%d" % ("https" if tls else "http", fabric, nova_port),
             "tls": {"ca": state + "/tls/ca.pem", "cert": state + "/tls/nova.pem", "key": state + "/tls/nova.key"} if tls else None},
    "metadata_service": {"ip": "169.254.169.254", "ip6": "fe80::a9fe:a9fe", "port": 80},
    "metadata_proxy": {"ip": fabric + ".2", "ip6": "fd00:a9fe:a9fe::1", "port": 8097},
    "secret": open(state + "/secret").read(),
    "vms": vms,
    "logs": {"agent": state + "/agent.log", "nova": state + "/nova.log"},
}
tmp = state + "/layout.json.tmp"
json.dump(layout, open(tmp, "w"), indent=2)
os.replace(tmp, state + "/layout.json")
PY
    UP_DONE=1
    echo "up: layout in $LAYOUT; remove everything with: $0 down --prefix $PREFIX" >&2
    if [ "$JSON" = 1 ]; then cat "$LAYOUT"; fi
}

cmd_down() {
    if [ ! -f "$CREATED" ] && ! ns_exists "$COMPUTE"; then
        echo "nothing is up for prefix $PREFIX" >&2
        return 0
    fi
    echo "removing emulated compute node '$PREFIX'" >&2
    stop_agent
    stop_pidfile "$STATE/nova.pid" "nova-metadata"
    local rootdir=""
    if [ -f "$CREATED" ]; then
        while read -r kind name; do
            case "$kind" in
                netns) if ns_exists "$name"; then ip netns del "$name" && echo "  deleted netns $name" >&2; fi ;;
                file) rm -f "$name" ;;
                dir) rmdir "$name" 2>/dev/null || true ;;
                rootdir) rootdir=$name ;;
            esac
        done < <(tac "$CREATED")
    else
        # `up` died before writing its list: only the two fixed names are known to be ours.
        for ns in "$COMPUTE" "$FABRIC"; do ns_exists "$ns" && ip netns del "$ns"; done
    fi
    rm -rf "$STATE"
    [ -n "$rootdir" ] && { rmdir "$rootdir" 2>/dev/null || true; }  # if no other prefix is up
    echo "down: prefix $PREFIX removed" >&2
}

cmd_status() {
    if ! ns_exists "$COMPUTE"; then echo "prefix $PREFIX is not up"; return 1; fi
    "$VROUTER" status --state-dir "$STATE" || true
    pid_alive "$STATE/nova.pid" && echo "nova-metadata pid $(cat "$STATE/nova.pid")" || echo "nova-metadata not running"
}

need_up() { ns_exists "$COMPUTE" || die "prefix $PREFIX is not up (run: $0 up --prefix $PREFIX)"; }

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    stop-agent) need_up; stop_agent ;;
    start-agent) need_up; start_agent ;;
    stop-nova) need_up; stop_pidfile "$STATE/nova.pid" "nova-metadata" ;;
    start-nova) need_up; start_nova ;;
    *) echo "netns_setup.sh: unknown command $CMD" >&2; usage ;;
esac
