"""Network namespaces made, entered and removed from Python, without a process per step.

What ``ip netns add`` does, in this process: a new network namespace is
unshared by a short-lived thread (``unshare(CLONE_NEWNET)`` moves only the
calling thread) and kept alive by bind-mounting it on ``/run/netns/NAME``, so
``ip netns`` and ``ip netns exec`` see it as their own.  ``Namespace`` opens a
rtnetlink socket inside it (from a thread that has ``setns`` into it: a socket
stays in the namespace it was made in) and hands it to pyroute2, and writes
its sysctls from such a thread (``/proc/sys/net`` is the opening thread's
namespace).

pyroute2's own ``IPRoute(netns=...)`` forks a helper process per socket, and
its ``IPRoute()`` opens its socket in its own thread, not the caller's: here
every socket is made in the namespace it is for, checked, and never in the
host's.  Nothing in this module acts on the host's own namespace.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0
SIOCGSKNS = 0x894C  # the namespace of a socket, as a new file descriptor
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """A namespace could not be made, entered or removed; the message names it."""


def path_of(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise NamespaceError(e, "%s: %s" % (what, os.strerror(e)))


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own (which may change its namespace and then ends)."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            err.append(e)

    t = threading.Thread(target=run, name="netns")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def _share_run_dir() -> None:
    """/run/netns as a shared mount point, as ``ip netns add`` leaves it, so that namespaces made
    later are seen inside ``ip netns exec`` (a mount namespace of its own)."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    if _libc.mount(b"none", NETNS_RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        _check(-1, "make %s shared" % NETNS_RUN_DIR)
    _check(_libc.mount(NETNS_RUN_DIR.encode(), NETNS_RUN_DIR.encode(), b"none", MS_BIND | MS_REC, None), "bind %s" % NETNS_RUN_DIR)
    _check(_libc.mount(b"none", NETNS_RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None), "make %s shared" % NETNS_RUN_DIR)


def create(name: str) -> None:
    """A new, empty network namespace called ``name`` (NamespaceError if it exists)."""
    _share_run_dir()
    path = path_of(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise NamespaceError(errno.EEXIST, "namespace %s exists already" % name) from None

    def make() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare a network namespace for %s" % name)
        _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None), "bind namespace %s" % name)

    try:
        _in_thread(make)
    except BaseException:
        os.unlink(path)
        raise


def delete(name: str) -> bool:
    """Remove the namespace (its interfaces go with it once no process is in it); False if
    there was none."""
    path = path_of(name)
    if not os.path.exists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() != errno.EINVAL:
        _check(-1, "unmount namespace %s" % name)
    os.unlink(path)
    return True


def _namespace_of(sock: socket.socket) -> int:
    """The inode of the network namespace a socket belongs to (SIOCGSKNS)."""
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def socket_in(ns_fd: int, home_fd: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket in the namespace of ``ns_fd``, made on this thread, which is back in ``home_fd``'s
    namespace when this returns (a socket stays in the namespace it was made in): for one thread
    that talks from many namespaces, as a load generator for a thousand VMs does."""
    _check(_libc.setns(ns_fd, CLONE_NEWNET), "enter a namespace")
    try:
        return socket.socket(family, kind)
    finally:
        _check(_libc.setns(home_fd, CLONE_NEWNET), "return to this thread's namespace")


class Namespace:
    """A namespace to configure: ``ipr`` is pyroute2 on a socket inside it, ``fd`` an open handle
    (for moving interfaces into it), ``sysctl`` writes its /proc/sys/net."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd = os.open(path_of(name), os.O_RDONLY)
        try:
            self._sock = self.run(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
        except BaseException:
            os.close(self.fd)
            raise
        try:
            if _namespace_of(self._sock) != os.fstat(self.fd).st_ino:  # never configure another namespace
                raise NamespaceError(errno.EBADF, "a netlink socket for namespace %s is not in it" % name)
            self.ipr = IPRoute(fileno=self._sock.fileno())
            self._sock.detach()  # pyroute2 owns and closes it
        except BaseException:
            self._sock.close()
            os.close(self.fd)
            raise

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread that is in this namespace."""

        def inside() -> T:
            _check(_libc.setns(self.fd, CLONE_NEWNET), "enter namespace %s" % self.name)
            return fn()

        return _in_thread(inside)

    def sysctl(self, settings: dict[str, str]) -> None:
        """Write ``net.x.y = value`` sysctls of this namespace."""

        def write() -> None:
            for key, value in settings.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(value)

        self.run(write)

    def create_tap(self, ifname: str) -> None:
        """A persistent tap device in this namespace (as os-vif makes one for a libvirt guest),
        for QEMU to open by name; it goes with the namespace."""

        def make() -> None:
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR)
            except OSError as e:
                raise NamespaceError(e.errno, "/dev/net/tun: %s (is the tun module loaded?)" % e.strerror) from None
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
            except OSError as e:
                raise NamespaceError(e.errno, "cannot make tap %s in %s: %s" % (ifname, self.name, e.strerror)) from None
            finally:
                os.close(fd)

        self.run(make)

    def index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise NamespaceError(errno.ENODEV, "no interface %s in namespace %s" % (ifname, self.name))
        return int(found[0])

    def close(self) -> None:
        try:
            self.ipr.close()
        finally:
            os.close(self.fd)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
