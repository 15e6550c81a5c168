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


class QueueDrops:
    """``all_queue_drops``, never going down.  A queue's count in /proc starts anew when its socket
    closes and the queue is bound again (a dataplane worker died, and the new process bound it):
    what it had counted when last read is kept and added.  A queue bound by none (its worker gone,
    not yet back) keeps its last count meanwhile."""

    def __init__(self) -> None:
        self._base: dict[int, int] = {}  # what earlier bindings of the queue had counted
        self._last: dict[int, int] = {}  # the kernel's count at the last read

    def read(self) -> dict[int, int]:
        for q, n in all_queue_drops().items():
            last = self._last.get(q, 0)
            if n < last:
                self._base[q] = self._base.get(q, 0) + last
            self._last[q] = n
        return {q: self._base.get(q, 0) + n for q, n in self._last.items()}

    def forget(self, queue_num: int) -> int:
        """A queue unbound for good: its count (kept by the caller), after which it starts anew."""
        n = self.read().get(queue_num, 0)
        self._base.pop(queue_num, None)
        self._last.pop(queue_num, None)
        return n


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
