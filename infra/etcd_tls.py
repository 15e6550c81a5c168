"""TLS to etcd: the files a client presents and checks with, and what a failed handshake means.

An ``https://`` etcd URL is reached over TLS: etcd's server certificate is
verified against ``ca`` (there is no fallback to the system's CAs: a cloud's
etcd has a CA of its own), and the client presents ``cert`` and ``key`` when
they are given (an etcd started with ``--client-cert-auth`` requires them).
``check`` loads the three files as the connection will, so a missing file, a
key that is not one, or a key that does not match its certificate stops
start-up with a message naming the file, not a connection that fails later.
``why`` turns a failed handshake into words an operator can act on.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class EtcdTls:
    """The CA that signed etcd's certificate; this client's certificate and key (both, or neither)."""

    ca: str
    cert: str = ""
    key: str = ""

    def check(self) -> None:
        """ValueError naming the file when one cannot be used."""
        if bool(self.cert) != bool(self.key):
            only = "certificate" if self.cert else "key"
            raise ValueError("a client certificate needs its key and a key its certificate (got only the %s)" % only)
        for what, path in (("CA certificate", self.ca), ("client certificate", self.cert), ("client key", self.key)):
            if not path:
                continue
            try:
                st = os.stat(path)
            except OSError as e:
                raise ValueError("%s %s: %s" % (what, path, e.strerror)) from None
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("%s %s: not a file" % (what, path))
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ValueError("%s %s: %s" % (what, path, e.strerror)) from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, ValueError) as e:
            raise ValueError("CA certificate %s: not a PEM certificate (%s)" % (self.ca, _reason(e))) from None
        if self.cert:
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, ValueError) as e:
                raise ValueError("client certificate %s and key %s: %s" % (self.cert, self.key, _load_problem(e))) from None

    def group_or_world_readable(self) -> list[str]:
        """The private key, when others than its owner may read it."""
        try:
            return [self.key] if self.key and os.stat(self.key).st_mode & 0o077 else []
        except OSError:
            return []


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e).replace("_", " ").lower()


def _load_problem(e: BaseException) -> str:
    r = _reason(e)
    if "key values mismatch" in r:
        return "the key is not the certificate's"
    if "pem" in r or "no start line" in r or "asn1" in r or "decoder" in r:
        return "not a PEM certificate and key (%s)" % r
    return r


NO_CERT = "etcd requires a client certificate: give one ([ETCD] certfile and keyfile, or --etcd-cert and --etcd-key)"
REFUSED = "etcd refused this client's certificate (it is not signed by a CA etcd trusts, or not for client use)"
CLOSED = "etcd closed the connection in the handshake (it refused this client's certificate, or it is not etcd)"

# What a failed handshake says (OpenSSL's reasons, as they reach Python), and what it means.
_MEANINGS = [
    (r"certificate required", NO_CERT),
    (r"unknown ca|bad certificate|certificate unknown|unsupported certificate", REFUSED),
    (r"certificate has expired", "a certificate has expired"),
    (r"ip address mismatch|hostname mismatch|doesn't match",
     "etcd's certificate is not for this address (its subjectAltName must name the URL's host)"),
    (r"certificate verify failed",
     "etcd's certificate is not signed by the CA given ([ETCD] ca_cert, or --etcd-ca): certificate verify failed"),
    (r"wrong version number|record layer failure|http request",
     "no TLS there (is that etcd serving http://, not https://?)"),
    (r"eof occurred in violation of protocol", CLOSED),
]  # fmt: skip


def why(text: str, client_cert: bool = True) -> str | None:
    """What a TLS failure's text (an exception's, however wrapped) means; None if it is none.
    ``client_cert``: whether this client presented a certificate (without one, a refused
    handshake is etcd asking for one)."""
    low = text.lower()
    if "ssl" not in low and "tls" not in low and "certificate" not in low:
        return None
    for pattern, meaning in _MEANINGS:
        if re.search(pattern, low):
            return "TLS: " + (NO_CERT if not client_cert and meaning in (REFUSED, CLOSED) else meaning)
    found = re.search(r"\[SSL(?:: [A-Z_]+)?\] ([^()'\"]+)", text)
    return "TLS: " + found.group(1).strip() if found else None
