"""The few libbpf calls the ebpf datapath needs, through ctypes: open and load an object file,
size a map before the load, take the programs' and maps' descriptors, and attach a program to a
device's clsact hook (``bpf_tc_*``, which act in the calling thread's network namespace).

Debian's libbpf1 (1.1) provides the library; nothing is compiled for Python.  Every failure is a
``LibbpfError`` whose message names the call and the kernel's reason.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os

log = logging.getLogger("vrouter.ebpf")

BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
BPF_TC_F_REPLACE = 1


class LibbpfError(OSError):
    """A libbpf call failed (errno says why) or libbpf is missing."""


class TcHook(ctypes.Structure):  # struct bpf_tc_hook
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int), ("parent", ctypes.c_uint32)]


class TcOpts(ctypes.Structure):  # struct bpf_tc_opts
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


_lib: ctypes.CDLL | None = None
_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
recent: collections.deque[str] = collections.deque(maxlen=40)  # libbpf's last messages (a failed load's verifier log)


def _print(level: int, fmt: bytes, args: int) -> int:
    """libbpf's messages: kept for an error to quote, and logged at debug level (it reports as
    warnings what callers expect, such as a clsact qdisc already there)."""
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    text = buf.value.decode(errors="replace").rstrip()
    recent.append(text)
    log.debug("libbpf: %s", text)
    return 0


_print_cb = _PRINT(_print)  # kept alive as long as the module
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            so = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError:
            raise LibbpfError(errno.ENOENT, "libbpf.so.1 not found: install Debian's libbpf1 (make install does)") from None
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_map__set_max_entries", i, [vp, ctypes.c_uint32]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_program__fd", i, [vp]),
            ("bpf_tc_hook_create", i, [vp]),
            ("bpf_tc_hook_destroy", i, [vp]),
            ("bpf_tc_attach", i, [vp, vp]),
            ("bpf_tc_detach", i, [vp, vp]),
            ("libbpf_set_print", vp, [vp]),
        ):
            fn = getattr(so, name)
            fn.restype = res
            fn.argtypes = args
        so.libbpf_set_print(ctypes.cast(_print_cb, ctypes.c_void_p))
        _lib = so
    return _lib


def _check(r: int, what: str) -> int:
    if r < 0:
        e = -r if r < -1 else ctypes.get_errno() or errno.EINVAL
        raise LibbpfError(e, "%s: %s" % (what, os.strerror(e)))
    return r


class BpfObject:
    """An object file opened and, after ``load``, in the kernel; closing it closes its descriptors
    (programs stay while attached, maps while a program or a mapping holds them)."""

    def __init__(self, path: str) -> None:
        self._lib = lib()
        obj = self._lib.bpf_object__open_file(path.encode(), None)
        if not obj:
            e = ctypes.get_errno() or errno.EINVAL
            raise LibbpfError(e, "open %s: %s" % (path, os.strerror(e)))
        self._obj: int | None = obj

    def _map(self, name: str) -> int:
        m = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(errno.ENOENT, "no map %s in the object" % name)
        return m

    def set_max_entries(self, name: str, n: int) -> None:
        _check(self._lib.bpf_map__set_max_entries(self._map(name), n), "size map %s" % name)

    def load(self) -> None:
        recent.clear()
        r = self._lib.bpf_object__load(self._obj)
        if r < 0:
            said = [line for line in recent if line][-6:]
            _check(r, "load the programs (%s)" % (" / ".join(said) or "the kernel's verifier or permissions"))

    def map_fd(self, name: str) -> int:
        return _check(self._lib.bpf_map__fd(self._map(name)), "map %s" % name)

    def prog_fd(self, name: str) -> int:
        p = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not p:
            raise LibbpfError(errno.ENOENT, "no program %s in the object" % name)
        return _check(self._lib.bpf_program__fd(p), "program %s" % name)

    def close(self) -> None:
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None


def _hook(ifindex: int, point: int) -> TcHook:
    return TcHook(ctypes.sizeof(TcHook), ifindex, point, 0)


def tc_attach(ifindex: int, point: int, prog_fd: int) -> None:
    """Attach a program to a device's clsact ``point`` (the qdisc made if missing), in place of
    what this module attached there before (handle 1, priority 1)."""
    so = lib()
    both = _hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    r = so.bpf_tc_hook_create(ctypes.byref(both))
    if r < 0 and -r != errno.EEXIST:
        _check(r, "add a clsact qdisc to interface %d (CONFIG_NET_SCH_INGRESS)" % ifindex)
    hook = _hook(ifindex, point)
    opts = TcOpts(ctypes.sizeof(TcOpts), prog_fd, BPF_TC_F_REPLACE, 0, 1, 1)
    _check(so.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), "attach to interface %d (CONFIG_NET_CLS_BPF)" % ifindex)


def tc_detach_all(ifindex: int) -> bool:
    """Remove the device's clsact qdisc and so every program on it; False if there was none."""
    r = lib().bpf_tc_hook_destroy(ctypes.byref(_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)))
    if r < 0 and -r in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
        return False
    _check(r, "remove the clsact qdisc of interface %d" % ifindex)
    return True
