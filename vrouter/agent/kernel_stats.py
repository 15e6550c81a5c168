"""What the compute namespace's kernel drops before or instead of the dataplane, for ``dropstats``."""

from __future__ import annotations


def queue_rows() -> dict[int, tuple[int, int]]:
    """Every bound NFQUEUE queue of the namespace: (the netlink port id of the socket that bound it,
    the packets the kernel dropped because the queue was full or could not reach its reader: fail
    closed), from /proc/net/netfilter/nfnetlink_queue (queue_dropped + user_dropped)."""
    out = {}
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 7 and cols[0].isdigit():
                    out[int(cols[0])] = (int(cols[1]), int(cols[5]) + int(cols[6]))
    except OSError:
        pass
    return out


def all_queue_drops() -> dict[int, int]:
    """The kernel's drop count of every bound queue (``queue_rows`` without the port ids)."""
    return {q: n for q, (_, n) in queue_rows().items()}


class QueueDrops:
    """The queues' drop counts, never going down.  A queue's count in /proc starts anew when its
    socket closes and the queue is bound again (a dataplane worker died, and the new process bound
    it): the binding is told by its socket's port id, and what earlier bindings had counted when
    last read is kept and added.  A queue bound by none (its worker gone, not yet back) keeps its
    last count meanwhile.  A queue ``forget`` handed over counts anew from its next binding."""

    def __init__(self) -> None:
        self._base: dict[int, int] = {}  # what earlier bindings of the queue had counted
        self._last: dict[int, tuple[int, int]] = {}  # (port id, count) at the last read
        self._forgotten: dict[int, int] = {}  # queue -> the port id of the binding handed over

    def read(self) -> dict[int, int]:
        for q, (port, n) in queue_rows().items():
            if self._forgotten.get(q) == port:
                continue  # the binding handed over, still in /proc until its worker lets it go
            self._forgotten.pop(q, None)
            last = self._last.get(q)
            if last is not None and last[0] != port:
                self._base[q] = self._base.get(q, 0) + last[1]
            self._last[q] = (port, n)
        return {q: self._base.get(q, 0) + n for q, (_, n) in self._last.items()}

    def forget(self, queue_num: int) -> int:
        """A queue unbound for good: its count (kept by the caller, so not counted here again)."""
        n = self.read().get(queue_num, 0)
        last = self._last.pop(queue_num, None)
        self._base.pop(queue_num, None)
        if last is not None:
            self._forgotten[queue_num] = last[0]
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
