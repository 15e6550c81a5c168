#!/bin/sh
# busybox udhcpc's event script for a namespace VM (scripts/netns_setup.sh up --dhcp runs udhcpc
# inside the VM's namespace with it). It applies the lease to the interface with ip(8), as a
# guest's own client would, and records the lease in $LEASE_FILE (one key=value a line, the
# variables udhcpc gives its script). It writes no file of the host's: the resolver goes to
# $RESOLV_CONF, the namespace's own /etc/netns/<ns>/resolv.conf.
set -u
: "${LEASE_FILE:?}" "${RESOLV_CONF:?}" "${interface:?}"
event=$1

record() {
    tmp=$LEASE_FILE.tmp
    {
        echo "event=$1"
        for v in ip mask subnet broadcast router dns domain hostname mtu lease serverid staticroutes message; do
            eval "echo $v=\${$v:-}"
        done
    } >"$tmp"
    mv "$tmp" "$LEASE_FILE"
    echo "$(date +%s) $1 ${ip:-}" >>"$LEASE_FILE.events"
}

case "$event" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    old=$(sed -n 's/^ip=//p' "$LEASE_FILE" 2>/dev/null || true)
    [ -n "$old" ] && [ "$old" != "$ip" ] && ip -4 addr flush dev "$interface"
    ip addr replace "$ip/${mask:-32}" broadcast "${broadcast:-+}" dev "$interface"
    [ -n "${mtu:-}" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "${staticroutes:-}" ]; then
        # RFC 3442: with classless static routes, the router option is not used
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            ip route replace "$1" via "$2" dev "$interface"
            shift 2
        done
    elif [ -n "${router:-}" ]; then
        for r in $router; do
            ip route replace default via "$r" dev "$interface"
            break
        done
    fi
    {
        [ -n "${domain:-}" ] && echo "search $domain"
        for d in ${dns:-}; do echo "nameserver $d"; done
    } >"$RESOLV_CONF"
    record "$event"
    ;;
leasefail | nak)
    echo "$(date +%s) $event" >>"$LEASE_FILE.events"
    ;;
esac
exit 0
