"""What the compute namespace's kernel drops before or instead of the dataplane, for ``dropstats``."""

from __future__ import annotations


def all_queue_drops() -> dict[int, int]:
    """Packets the kernel dropped because one of the namespace's NFQUEUE queues was full or could
    not reach its reader (fail closed), by queue: queue_dropped + user_dropped of
    /proc/net/netfilter/nfnetlink_queue (only bound queues are listed)."""
    out = {}
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 7 and cols[0].isdigit():
                    out[int(cols[0])] = int(cols[5]) + int(cols[6])
    except OSError:
        pass
    return out


def queue_drops(queue_num: int) -> int:
    """The same, for one queue."""
    return all_queue_drops().get(queue_num, 0)


def kernel_ip_drops() -> dict[str, int]:
    """What the compute namespace's kernel drops before the dataplane sees it (IP headers it
    finds invalid: bad version, IHL, total length or checksum), from /proc/net/snmp."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Ip:")]
        ip = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    except (OSError, IndexError, ValueError):
        return {}
    return {"Kernel IP Header Errors": ip.get("InHdrErrors", 0), "Kernel IP Address Errors": ip.get("InAddrErrors", 0)}
