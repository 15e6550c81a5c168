"""Throw-away certificates for a lab: a CA of its own, and server and client certificates it signs.

Made with Debian's ``openssl`` command (EC P-256 keys, valid 7 days), for
Nova's HTTPS (``up --tls``), the lab's own etcd with client-certificate
authentication (``up --etcd-tls``) and the tests.  Everything goes into one
directory made 0700; every private key is 0600 from the moment it exists
(openssl writes them so, and the mode is checked after), certificates 0644.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from topology.errors import LabError

DAYS = "7"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Issued:
    """A certificate and its key (PEM files)."""

    cert: str
    key: str


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise LabError("openssl not found: apt-get install openssl (or run make install)")
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode:
        raise LabError("openssl %s: %s" % (args[0], r.stderr.strip() or "failed"))


def _private(path: str) -> None:
    os.chmod(path, 0o600)  # openssl makes keys 0600 already: this is for an older one's doing


def private_dir(directory: str) -> str:
    """``directory``, made (or made again) 0700."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


class CertAuthority:
    """A CA in ``directory`` (``NAME.pem``, ``NAME.key``) and what it signs there."""

    def __init__(self, directory: str, name: str = "ca") -> None:
        self.dir = directory
        self.cert = os.path.join(directory, name + ".pem")
        self.key = os.path.join(directory, name + ".key")

    def create(self, subject: str) -> CertAuthority:
        """The CA made (subject ``subject``, a common name)."""
        private_dir(self.dir)
        _openssl("req", "-x509", *_KEY, "-days", DAYS, "-subj", "/CN=" + subject, "-keyout", self.key, "-out", self.cert)
        _private(self.key)
        return self

    def issue(self, name: str, subject: str, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (), server: bool = False,
              client: bool = False) -> Issued:  # fmt: skip
        """``NAME.pem`` and ``NAME.key``: a certificate for ``subject`` with the addresses and names
        it is valid for, for a server, a client or both (extended key usage)."""
        base = os.path.join(self.dir, name)
        _openssl("req", *_KEY, "-subj", "/CN=" + subject, "-keyout", base + ".key", "-out", base + ".csr")
        _private(base + ".key")
        usage = [u for u, wanted in (("serverAuth", server), ("clientAuth", client)) if wanted]
        alt = ["IP:" + ip for ip in ips] + ["DNS:" + d for d in dns]
        with open(base + ".ext", "w") as f:
            if alt:
                f.write("subjectAltName=%s\n" % ",".join(alt))
            if usage:
                f.write("extendedKeyUsage=%s\n" % ",".join(usage))
        _openssl("x509", "-req", "-in", base + ".csr", "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial", "-days", DAYS,
                 "-extfile", base + ".ext", "-out", base + ".pem")  # fmt: skip
        for leftover in (base + ".csr", base + ".ext"):
            os.unlink(leftover)
        return Issued(base + ".pem", base + ".key")
