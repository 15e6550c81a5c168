"""What the VMs do, from one process: cloud-init's metadata requests from every VM at once.

A test or a soak with a thousand VMs cannot start a client process in each (a Python process is
10 MB and a second of a core to start); ``CloudInitClients`` makes each VM's sockets in that
VM's namespace instead (the thread enters it for the ``socket()`` call only, and a socket stays
in the namespace it was made in) and drives them all from one asyncio loop.  Real sockets, real
packets through the VM's interface and the node's dataplane, real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable

import httptools

from topology import netns

METADATA = ("169.254.169.254", 80)
Check = Callable[[bytes], bool] | None


def sequence(uuid: str) -> list[tuple[str, Check]]:
    """cloud-init's OpenStack datasource requests, then the EC2 tree's, with what each answer must hold."""

    def own(body: bytes) -> bool:
        return json.loads(body)["uuid"] == uuid

    seq: list[tuple[str, Check]] = [("/openstack", lambda b: b"2018-08-27" in b)]
    seq.append(("/openstack/2018-08-27/meta_data.json", own))
    for name in ("user_data", "vendor_data.json", "vendor_data2.json", "network_data.json"):
        seq.append(("/openstack/2018-08-27/" + name, None))
    seq.append(("/2009-04-04/meta-data/", lambda b: b"instance-id" in b))
    for leaf in ("instance-id", "hostname", "local-ipv4", "placement/availability-zone", "public-keys/0/openssh-key"):
        seq.append(("/2009-04-04/meta-data/" + leaf, None))
    seq.append(("/2009-04-04/user-data", None))
    return seq


class _Answer:
    """An HTTP response as httptools parses it."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.done = True


class CloudInitClients:
    """Every VM at once, from one process: a socket made in each VM's namespace (the thread
    enters it for the socket() call only), one request at a time a VM, a new connection per
    request as cloud-init's url_helper makes them, each answer checked to be the VM's own."""

    def __init__(self, vms: list[dict]) -> None:
        """``vms``: the layout's, each with its ``namespace`` and ``instance_uuid``."""
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self.vms = [(os.open(netns.path_of(vm["namespace"]), os.O_RDONLY), vm["instance_uuid"]) for vm in vms]

    def close(self) -> None:
        for fd, _ in self.vms:
            os.close(fd)
        os.close(self.home)

    async def get(self, fd: int, path: str, want: Check, st: dict) -> None:
        """One request on a new connection from the VM of namespace ``fd``, counted in ``st``."""
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        status = 0
        body = b""
        s = netns.socket_in(fd, self.home)
        phase = "connect"
        try:
            s.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(s, METADATA), 10)
            phase = "answer"
            req = "GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: Cloud-Init/23.1\r\nConnection: close\r\n\r\n" % path
            await loop.sock_sendall(s, req.encode())
            answer = _Answer()
            parser = httptools.HttpResponseParser(answer)
            while not answer.done:
                data = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
                if not data:
                    break
                parser.feed_data(data)
            status = parser.get_status_code() if answer.done else 0
            body = bytes(answer.body)
            good = status == 200 and (want is None or want(body))
        except (TimeoutError, OSError, httptools.HttpParserError, ValueError, KeyError) as e:
            good, body = False, ("%s: %r" % (phase, e)).encode()
            failed_in = st.setdefault("failed_in", {})
            failed_in[phase] = failed_in.get(phase, 0) + 1
        finally:
            s.close()
        st["worst"] = max(st["worst"], time.monotonic() - t)
        if good:
            st["ok"] += 1
        else:
            st["failed"] += 1
            if len(st["errors"]) < 5:
                st["errors"].append("%s: %s %r" % (path, status or "-", body[:80]))

    async def vm(self, fd: int, uuid: str, deadline: float) -> dict:
        """One VM's rounds: requests answered right and not, the worst latency, the first errors."""
        st: dict = {"ok": 0, "failed": 0, "rounds": 0, "worst": 0.0, "errors": [], "failed_in": {}}
        seq = sequence(uuid)
        while True:  # a round at least
            for path, want in seq:
                await self.get(fd, path, want, st)
            st["rounds"] += 1
            if time.monotonic() >= deadline:
                break
        st["worst_s"] = round(st.pop("worst"), 3)
        return st

    def wave(self, seconds: float) -> list[dict]:
        """Every VM runs the sequence again and again for ``seconds`` (a round at least); what each got."""

        async def all_vms() -> list[dict]:
            deadline = time.monotonic() + seconds
            return list(await asyncio.gather(*(self.vm(fd, uuid, deadline) for fd, uuid in self.vms)))

        return asyncio.run(all_vms())

    def once(self) -> list[dict]:
        """Each VM's sequence once, all VMs at once."""
        return self.wave(0)
