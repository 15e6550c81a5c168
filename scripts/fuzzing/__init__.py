"""``make fuzz``: a VM fuzzes a live compute node while the other VMs must be served throughout.

* ``targets``: the lab's addresses as the attacker sees them (what it may send to: nothing outside
  the lab's namespaces), passed to the sending processes as JSON;
* ``packets``: scapy's ``fuzz()`` on each protocol a VM can send (Ethernet, ARP, IPv4, IPv6, TCP,
  UDP, ICMP, ICMPv6, neighbour discovery, DHCP, DHCPv6, DNS), one frame at a time;
* ``tunnel``: MPLS over UDP to a node's tunnel port, as another node of the cloud sends it;
* ``malformed_http``: what a VM can say to 169.254.169.254:80 that is not HTTP, or barely;
* ``sender``: the process that sends them for so many seconds at a bounded rate (in the VM's
  namespace, or the fabric's for the tunnel), and counts;
* ``others``: the other VMs reading their own metadata and pinging each other and their gateways;
* ``watch``: the node's processes and logs, for crashes;
* ``campaign``: one run on one datapath, from ``Lab.up`` to ``Lab.down``.

``scripts/fuzz.py`` runs them.
"""
