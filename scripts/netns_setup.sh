#!/usr/bin/env bash
# Build or remove an emulated Tungsten Fabric compute node in network namespaces.
#
#   netns_setup.sh up [--vms N] [--networks K] [--nodes K [--etcd-tls]] [--etcd URL,... [--fabric-link NS]] [--flow-entries E] [--prefix P]
#                     [--secret S] [--datapath nfqueue|ebpf] [--tls] [--dhcp] [--ipv6 MODE[,MODE...]] [--json] [--join URL,... --node-id I --secret S [--fabric-link NS]]
#                     [--etcd-ca CA [--etcd-cert CERT --etcd-key KEY]]   (an https:// --etcd or --join URL)
#                     [--qemu M (--image FILE | --kernel K [--initrd I] [--append A]) [--accel auto|kvm|tcg] [--memory MIB]]
#                     [--user-data FILE] [--ssh-key PUBKEY_FILE] [--instances FILE]
#   netns_setup.sh down [--node I] [--prefix P]
#   netns_setup.sh status [--prefix P]
#   netns_setup.sh stop-agent|start-agent [--node I] [--prefix P]
#   netns_setup.sh stop-nova|start-nova|stop-etcd|start-etcd [--prefix P]
#
# `up` creates namespaces P-compute, P-fabric and P-vm1..P-vmN (default prefix vr), one veth per VM
# (compute side named tap + the first 11 characters of the port uuid, VM side eth0), and vhost0
# from the compute namespace to the fabric. It starts `vrouter nova-metadata` in the fabric
# namespace (10.10.0.1:8775) and `vrouter agent` in the compute namespace (vhost0 10.10.0.2), plugs
# every VM's port and provisions the `metadata` link-local service (169.254.169.254:80 ->
# 10.10.0.1:8775) through the agent's control socket, with the messages `vrouter network add`,
# `vrouter port add` and `vrouter linklocal add` send. Virtual network J (1 to K) is 10.1.J.0/24:
# gateway 10.1.J.1, service address (the agent's DHCP server and DNS) 10.1.J.2, a VRF of its own;
# the VMs are dealt out to the networks in turn, and VMs of different networks do not reach each
# other. --networks K: K networks (default: as many as the VMs need, 252 a network: one, 10.1.1.0/24,
# up to 252 VMs). Up to 4096 VMs and guests in all.
#
# --dhcp: the namespace VMs take their address with busybox udhcpc (kept running; leases in
# /run/vrouter/P/dhcp/) instead of a static one. Every network is dual stack: network J's IPv6
# subnet is fd00:10:1:J::/64 (gateway ::1, service address ::2); --ipv6 MODE gives its address mode,
# as Neutron's ipv6_address_mode: none (the default: static, the VMs set ::H themselves), slaac (the
# kernel's SLAAC from the agent's router advertisements; the port's address is the EUI-64 of its
# MAC), dhcpv6-stateful (ISC dhclient -6 takes ::H from the agent), dhcpv6-stateless (SLAAC, and
# dhclient -6 -S asks for DNS); a list gives network J the Jth mode, the last for the rest. --qemu M: M QEMU guests besides the namespace
# VMs, each on a tap in P-compute made by the port plug (virtio-net, the port's MAC, SMBIOS as
# Nova sets it, the serial console in /run/vrouter/P/guests/NAME.console), booting --image FILE
# (qcow2 or raw, on a copy-on-write overlay: the file is never written) by its own boot loader, or
# --kernel/--initrd/--append directly; --accel auto (KVM where a KVM guest boots, else TCG).
# --user-data, --ssh-key and --instances (JSON, by instance name: hostname, public_keys,
# user_data, admin_pass, vendor_data, vendor_data2, meta) give the instances their data.
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
# --nodes K builds a cloud of K compute nodes (P-compute1..K) on one fabric bridge, configured
# through one etcd in P-fabric (or --etcd URL's, reached through --fabric-link NS); --join URL adds this prefix's nodes to an existing
# cloud (its etcd, Nova and networks), --fabric-link NS joining our fabric to NS's bridge br-fabric
# by a veth; down --node I removes one node and its keys. See docs/cluster.md.
# An https:// --etcd or --join URL is reached with --etcd-ca (etcd's CA) and, for an etcd that wants
# client certificates, --etcd-cert and --etcd-key, written into every node's agent.conf ([ETCD]
# ca_cert, certfile, keyfile) and given to Nova; --etcd-tls starts the lab's own etcd over TLS with
# client certificates (a throw-away CA and certificates in /run/vrouter/P/etcd-tls).
#
# /run/vrouter/P is root's alone (0700), and so are the secret, the layout, each agent.conf,
# Nova's instances and the TLS keys in it (0600); start-agent puts right what was left open.
# --flow-entries E sizes each agent's flow table (128 bytes an entry; for clouds of many nodes).
# --datapath ebpf forwards live flows in the kernel (an eBPF program on each tap, misses to the
# agent's Python engine); nfqueue (the default) sends every packet through the engine. See docs/datapath.md.
#
# start-agent passes $VROUTER_AGENT_ARGS to `vrouter agent` (e.g. "--nova-timeout 2").
#
# The work is done by the Python package `topology` (topology/model.py describes the host,
# topology/lab.py builds and removes it); this script only finds the project's Python.
# Nothing here touches the host's own interfaces, routes or firewall: all of it lives inside the
# namespaces this script creates. Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$HERE/.venv/bin/python}
[ -x "$PYTHON" ] || { echo "netns_setup.sh: $PYTHON not found: run make install" >&2; exit 1; }
NETNS_SETUP=$0 PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH} exec "$PYTHON" -m topology "$@"
