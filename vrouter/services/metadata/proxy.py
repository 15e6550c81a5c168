"""The agent's metadata proxy: identify the VM by its metadata IP, sign, relay to Nova.

The dataplane NATs a VM's connection to 169.254.169.254:80 so that it arrives
here from the VM port's metadata IP (169.254.0.0 + vif index).  That peer
address says which VM is asking (``identify``).  The proxy removes any
identity headers the VM sent, adds X-Forwarded-For, X-Instance-ID, X-Tenant-ID
(project uuid without dashes), X-Instance-ID-Signature (HMAC-SHA256 of the
instance uuid keyed with the shared secret) and Host, and relays the request
to Nova over a keep-alive pool.

``MetadataProxy`` listens and stops; what both sides share (identity and
signing, the counters, the journal, the fault rules and the pool of
connections to Nova) is ``core.ProxyCore``, which it is.  The VM side
(``vm_side.VMConnection``) and the Nova side (``nova_side.NovaConnection``)
are asyncio Protocols around llhttp (httptools): no task, no coroutine and no
per-request object tree on the path of a pooled keep-alive request, which is
what makes the proxy fast enough to stand beside haproxy.
"""

from __future__ import annotations

import asyncio
import logging

from vrouter.services.metadata import tcp
from vrouter.services.metadata.core import ProxyCore
from vrouter.services.metadata.vm_side import VMConnection

log = logging.getLogger("vrouter.metadata")


class MetadataProxy(ProxyCore):
    """The proxy: ``ProxyCore``'s state, and VM connections accepted on its sockets."""

    async def start(self, host: str | list[str], port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: VMConnection(self), host, port, reuse_address=True, backlog=4096)
        for sock in server.sockets:
            tcp.delayed_acks(sock)  # accepted connections inherit it (see tcp.delayed_acks)
        self.servers.append(server)
        log.info("metadata proxy listening on %s port %d", host if isinstance(host, str) else ", ".join(host), port)

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        self.servers.clear()
        self.pool.close()
        for c in list(self.clients):
            c.close(abort=True)
