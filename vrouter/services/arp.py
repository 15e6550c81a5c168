"""The agent's answers to a guest's ARP, as the vRouter answers them (tf-vrouter ``vr_proto_ip.c``,
tf-controller ``services/arp_proto.cc``).

Pure.  Rules:

* A request for the network's gateway or service address, or for another VM's
  address in the same VRF, is answered with the vRouter MAC 00:00:5e:00:01:00:
  the vRouter routes between its VMs, so every address a VM reaches on its
  subnet is behind its own tap.
* A port whose network is not configured yet: every address but the VM's own
  is answered so (what the kernel's proxy ARP did before the agent answered).
* A gratuitous ARP (sender and target the same), a request for the VM's own
  address (duplicate address detection) and ARP replies get nothing.
* A request whose sender is neither the VM's address nor 0.0.0.0 (a probe) is
  dropped (Invalid Source); a frame that is not Ethernet/IPv4 ARP is dropped
  (Invalid ARP).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from dataplane.core.frames import ARP_REQUEST, VROUTER_MAC, Arp, arp_reply_frame

ANY = bytes(4)


class Outcome(enum.Enum):
    ANSWERED = "answered"
    IGNORED = "ignored"
    FORGED = "forged"  # the sender is not the VM


def answer(arp: Arp, vm_ip: bytes, answers_for: Callable[[bytes], bool]) -> tuple[Outcome, bytes | None]:
    """What the agent does with ``arp`` from the VM whose address is ``vm_ip``; ``answers_for(ip)``
    says whether the vRouter has ``ip`` for this VM (gateway, service address, another VM)."""
    if arp.op != ARP_REQUEST:
        return Outcome.IGNORED, None
    if arp.sender_ip not in (vm_ip, ANY):
        return Outcome.FORGED, None
    if arp.target_ip == arp.sender_ip or arp.target_ip == vm_ip or not answers_for(arp.target_ip):
        return Outcome.IGNORED, None
    return Outcome.ANSWERED, arp_reply_frame(arp, VROUTER_MAC)
