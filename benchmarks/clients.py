"""The programs benchmarks/run.py runs inside the emulated host's namespaces: the load generators
and sinks (each given to ``python -c`` in a VM, its figures printed as JSON on its last line), the
sender of new flows (each packet a new 5-tuple), the accept-only NFQUEUE consumer, and the hping3
floods of the fairness rows.

A request that fails counts in the latency percentiles as never answered (infinite): a p99 is
then infinite when more than 1% of the requests failed, never better for the failures."""

LATENCY_CLIENT = r"""
import asyncio, json, sys, time
rate, seconds, conns = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
REQ = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
lat, errors = [], 0
async def one(r, w):
    w.write(REQ)
    head = await r.readuntil(b"\r\n\r\n")
    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await r.readexactly(n)
    return head.startswith(b"HTTP/1.1 200")
async def main():
    pool = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("169.254.169.254", 80))
    start = time.monotonic()
    tasks = []
    i = 0
    while True:
        scheduled = start + i / rate
        if scheduled - start > seconds:
            break
        await asyncio.sleep(max(0, scheduled - time.monotonic()))
        async def run(s=scheduled):
            global errors
            c = await pool.get()
            try:
                ok = await asyncio.wait_for(one(*c), 10)
            except Exception:
                ok = False
                c[1].close()
                c = await asyncio.open_connection("169.254.169.254", 80)
            if ok:
                lat.append(time.monotonic() - s)
            else:  # never answered (or not with 200): it counts, as the slowest of all
                errors += 1
                lat.append(float("inf"))
            pool.put_nowait(c)
        tasks.append(asyncio.ensure_future(run()))
        i += 1
    await asyncio.gather(*tasks)
    lat.sort()
    print(json.dumps({"n": len(lat), "errors": errors, "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}))
asyncio.run(main())
"""

UDP_SINK = r"""
import socket, sys, time, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 9000))
s.settimeout(2)
print("ready", flush=True)
n, first, last = 0, None, None
try:
    while True:
        s.recv(2048)
        last = time.monotonic()
        first = first or last
        n += 1
except socket.timeout:
    pass
print(json.dumps({"packets": n, "seconds": (last - first) if n > 1 else 0}))
"""

UDP_SOURCE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, seconds = (sys.argv[1], 9000), float(sys.argv[2])
end = time.monotonic() + seconds
payload = b"x" * 18  # 64-byte Ethernet frames
n = 0
while time.monotonic() < end:
    for _ in range(256):
        s.sendto(payload, dst)
    n += 256
print(n)
"""

# The floor of the project's packet I/O: the agent's NFQUEUE shell (uvloop, the queue's socket
# drained without blocking, the same bind arguments, the same verdict writer and the same nftables
# rules) with a callback that only reads the packet and accepts it: no parsing, no flow table, no
# dataplane at all.
FLOOR_CONSUMER = r"""
import asyncio, signal, sys
sys.path.insert(0, sys.argv[3])
import uvloop
from netfilterqueue import COPY_PACKET, NetfilterQueue
from dataplane.linux.nftables import NftSocket, QueueRules
from dataplane.linux.verdicts import VerdictWriter
queue, table = int(sys.argv[1]), sys.argv[2]
def handle(pkt):
    pkt.get_payload(), pkt.indev
    verdicts.accept(pkt.id)
def drain():
    q.run(False)
    verdicts.flush()
async def main():
    global q, verdicts
    q = NetfilterQueue()
    q.bind(queue, handle, max_len=4096, mode=COPY_PACKET, range=0xFFFF)
    verdicts = VerdictWriter(q.get_fd(), queue)
    loop = asyncio.get_running_loop()
    loop.add_reader(q.get_fd(), drain)
    with NftSocket() as nft:
        nft.create_queue_table(QueueRules(queue_num=queue), name=table)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    with NftSocket() as nft:
        nft.delete_tables(table)
    loop.remove_reader(q.get_fd())
    q.unbind()
uvloop.run(main())
"""

TCP_SINK = r"""
import socket, sys, time, json
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], 9001))
l.listen(1)
print("ready", flush=True)
c, _ = l.accept()
n, t0 = 0, time.monotonic()
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(json.dumps({"bytes": n, "seconds": time.monotonic() - t0}))
"""

TCP_SOURCE = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9001))
buf = b"x" * (1 << 16)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendall(buf)
s.close()
"""

# New flows as fast as one VM can make them: every packet a 5-tuple not seen before (FLOW_SOCKETS
# source ports, each to destination ports FLOW_PORTS in turn: 3.2 million tuples, more than the
# sender reaches in its bounded time), so that each is a miss the Python engine sets up, in either
# datapath.  The receiving VM drops them without an answer (run.py's rule in its namespace).
FLOW_SOCKETS = 64
FLOW_PORTS = (10000, 59999)
FLOW_SOURCE = r"""
import json, socket, sys, time
dst, seconds, nsock, lo, hi = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
socks = []
for _ in range(nsock):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 0))
    socks.append(s)
payload = b"x" * 18  # 64-byte Ethernet frames
n, errors, port = 0, 0, lo
start = time.monotonic()
end = start + seconds
while time.monotonic() < end:
    for s in socks:
        try:
            s.sendto(payload, (dst, port))
        except OSError:  # a full socket buffer: that packet is not sent
            errors += 1
    n += nsock
    port = port + 1 if port < hi else lo
print(json.dumps({"sent": n - errors, "seconds": time.monotonic() - start}))
"""


FAIR_CLIENT = r"""
import json, socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
REQ = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
lat, failed = [], 0
start = time.monotonic()
i = 0
while True:
    scheduled = start + i / rate
    if scheduled - start > seconds:
        break
    time.sleep(max(0.0, scheduled - time.monotonic()))
    try:
        s = socket.create_connection(("169.254.169.254", 80), timeout=4)
        s.settimeout(4)
        s.sendall(REQ)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        ok = data.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    if not ok:  # never answered (or not with 200): it counts, as the slowest of all
        failed += 1
    lat.append(time.monotonic() - scheduled if ok else float("inf"))
    i += 1
lat.sort()
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
print(json.dumps({"n": len(lat), "failed": failed, "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": p99 * 1000}))
"""

# vm1's floods in the fairness rows, as fast as hping3 goes ("VM2": vm2's address)
FLOODS = {
    "syn": ["--flood", "-S", "-p", "80", "169.254.169.254"],
    "udp": ["--flood", "--udp", "-p", "9", "VM2"],
    "ping": ["--flood", "--icmp", "VM2"],
}
# A flood that reached vm1's vif (read or dropped there) at fewer packets a second than this did not
# run: its rows fail rather than show the calm as fairness
FLOOD_MIN_PPS = 1000
