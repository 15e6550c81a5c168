#!/bin/sh
# ISC dhclient -6's script for a namespace VM (scripts/netns_setup.sh up runs `dhclient -6` inside
# the VM's namespace with it, in networks whose IPv6 address mode is dhcpv6-stateful, and
# `dhclient -6 -S` in dhcpv6-stateless ones). It applies the lease with ip(8), as a guest's own
# client would, and records it in $LEASE_FILE (one key=value a line, the variables dhclient gives
# its script; dhclient gives it no other environment, so the lab runs it through a wrapper that
# sets LEASE_FILE and RESOLV_CONF). It writes no file of the host's: the resolver goes to $RESOLV_CONF, the namespace's
# own /etc/netns/<ns>/resolv.conf. (Debian's /sbin/dhclient-script would write the host's.)
set -u
: "${LEASE_FILE:?}" "${RESOLV_CONF:?}" "${interface:?}" "${reason:?}"

record() {
    tmp=$LEASE_FILE.tmp
    {
        echo "event=$reason"
        for v in new_ip6_address new_ip6_prefixlen new_dhcp6_name_servers new_dhcp6_domain_search new_dhcp6_server_id \
            new_preferred_life new_max_life new_renew new_rebind new_iaid; do
            eval "echo $v=\${$v:-}"
        done
    } >"$tmp"
    mv "$tmp" "$LEASE_FILE"
    echo "$(date +%s) $reason ${new_ip6_address:-}" >>"$LEASE_FILE.events"
}

resolver() { # beside what the IPv4 client wrote there, each line once
    [ -f "$RESOLV_CONF" ] || return 0
    { [ -n "${new_dhcp6_domain_search:-}" ] && echo "search $new_dhcp6_domain_search"
      for d in ${new_dhcp6_name_servers:-}; do echo "nameserver $d"; done; } | while read -r line; do
        grep -qxF "$line" "$RESOLV_CONF" || echo "$line" >>"$RESOLV_CONF"
    done
}

case "$reason" in
PREINIT6)
    ip link set "$interface" up
    ;;
BOUND6 | RENEW6 | REBIND6 | REBOOT6)
    if [ -n "${old_ip6_address:-}" ] && [ "${old_ip6_address:-}" != "${new_ip6_address:-}" ]; then
        ip -6 addr del "$old_ip6_address/${old_ip6_prefixlen:-128}" dev "$interface" 2>/dev/null || true
    fi
    if [ -n "${new_ip6_address:-}" ]; then
        ip -6 addr replace "$new_ip6_address/${new_ip6_prefixlen:-128}" dev "$interface" nodad \
            valid_lft "${new_max_life:-forever}" preferred_lft "${new_preferred_life:-forever}"
    fi
    resolver
    record
    ;;
EXPIRE6 | RELEASE6 | STOP6)
    [ -n "${old_ip6_address:-}" ] && ip -6 addr del "$old_ip6_address/${old_ip6_prefixlen:-128}" dev "$interface" 2>/dev/null
    echo "$(date +%s) $reason" >>"$LEASE_FILE.events"
    ;;
*)
    echo "$(date +%s) $reason" >>"$LEASE_FILE.events"
    ;;
esac
exit 0
