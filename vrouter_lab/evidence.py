"""What the lab gathered about one boot of one guest: the input of the verdict (``verdict.decide``).

Pure data, filled by ``vrouter_lab.gather`` from five sources, none of them a login to the guest
except the last:

* the serial console, each line with the host's seconds since QEMU was started (power-on);
* cloud-init's event reports (webhook reporting, configured through vendor data) and phone_home
  posts, as the lab's collector on the fabric received them;
* the node: the guest's DHCP lease (when the agent acknowledged it) and the instance's metadata
  journal (what it asked for and what it got);
* over SSH with the lab's own key, from a namespace VM of the guest's network: the outputs of a
  few commands (``SSH_COMMANDS``), when the key was injected and the guest let the lab in.

Times are seconds since power-on on the host's monotonic clock (``None``: not seen), so that they
can be compared across sources; the webhook's own ``timestamp`` is the guest's wall clock and is
kept as it came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What the lab runs over SSH (one session, each output under its name in ``Evidence.ssh``).
SSH_COMMANDS: dict[str, str] = {
    "status": "cloud-init status --format json --long",  # exit 1 on error, 2 when degraded (23.4+)
    "analyze": "cloud-init analyze show",
    "blame": "cloud-init analyze blame",
    "status_json": "sudo cat /run/cloud-init/status.json",
    "result_json": "sudo cat /run/cloud-init/result.json",
    "hostname": "hostname",
    "authorized_keys": "cat ~/.ssh/authorized_keys",
    "user_data_sha256": "sudo sha256sum /var/lib/cloud/instance/user-data.txt",
    "boot_id": "cat /proc/sys/kernel/random/boot_id",
    "instance_id": "cat /var/lib/cloud/data/instance-id",
    "ipv6_addresses": "ip -6 -o addr show scope global",
}
# ... and when the verdict judges IPv6, the namespace VM pinged (PEER: Expected.ipv6_peer)
SSH_PING6 = "ping -6 -c 3 -W 2 %s"


@dataclass
class Expected:
    """What the boot should show: from the instance's data and the command's options."""

    hostname: str  # meta_data.json's hostname
    keys: list[str] = field(default_factory=list)  # the public keys given (user's and the lab's), "type base64 [comment]"
    user_data_sha256: str = ""  # of the user data given ("" when there is none)
    user_data_kind: str = ""  # "cloud-config", "script", "multipart", "other", "" (none)
    datasource: str = ""  # --expect-datasource NAME ("" : no expectation), e.g. "ConfigDrive", "OpenStack"
    config_drive: str = "none"  # none, only, both
    boot: str = "first"  # first, reboot, rebuild: a reboot runs per-boot modules only
    ipv6: str = ""  # the port's IPv6 address, which the guest should have ("": IPv6 not judged)
    ipv6_peer: str = ""  # an address the guest should reach over IPv6 (the namespace VM it is logged in from)


@dataclass
class ConsoleLine:
    t: float  # seconds since power-on when the lab read it
    text: str  # without its line end; ANSI escapes and CRs removed


@dataclass
class Report:
    """One POST to the collector: ``kind`` "event" (a webhook event, ``body`` its JSON object) or
    "phone_home" (``body`` the form's fields)."""

    t: float  # seconds since power-on when it was received
    kind: str
    body: dict[str, Any]


@dataclass
class Request:
    """One entry of the instance's metadata journal."""

    t: float  # seconds since power-on when the request began
    method: str
    path: str
    status: int
    bytes_out: int  # bytes of the answer
    reason: str = ""  # why the proxy answered itself, if it did (fault, rate limit, ...)


@dataclass
class Evidence:
    image: str
    instance: dict[str, Any]  # name, uuid, hostname, ip, mac, node prefix
    expected: Expected
    console: list[ConsoleLine] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    lease_t: float | None = None  # when the agent acknowledged the guest's DHCP lease
    ssh: dict[str, str] = field(default_factory=dict)  # SSH_COMMANDS' outputs by name (stdout; absent: not run)
    ssh_exit: dict[str, int] = field(default_factory=dict)  # their exit codes
    ssh_error: str = ""  # why SSH was not used or failed ("" when it worked or was not asked for)
    ssh_user: str = ""
    timed_out: bool = False  # the timeout passed before cloud-init finished
    waited: float = 0.0  # seconds from power-on to the end of the gathering
    start_error: str = ""  # the node or QEMU could not be started (exit 3): why
    image_error: str = ""  # the image cannot boot at all (not an image, no boot sector): why
    qemu_exit: int | None = None  # QEMU's exit status if it ended during the boot (-1: it ended, its status unknown)
