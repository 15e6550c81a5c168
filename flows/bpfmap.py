"""BPF maps through the bpf(2) system call: what a reader of the ``ebpf`` datapath's flow table
needs (a map by its id, what kind of map it is, its memory mapped) and the element updates the
agent makes to the datapath's small maps.  ctypes and the system call only, no libbpf: the tools
that map the table run where the agent's loader is not loaded.

A map is found by its id, which is global (not per network or mount namespace): the agent writes
the table's id in a small file where nfqueue mode keeps the table itself (``flows/table.py``), so
that ``flow -l``, run through ``ip netns exec`` (which hides the host's bpffs), finds it.  Opening
a map by id needs CAP_SYS_ADMIN, as the agent's tools have when run as root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import struct

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_TEST_RUN = 10
SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK, SKB_IFINDEX = 8, 40  # offsets in struct __sk_buff
BPF_F_RDONLY = 1 << 3
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_ANY = 0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
# struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16], ...
_MAP_INFO = struct.Struct("=IIIIII16s")


class BpfError(OSError):
    """A bpf(2) call failed; errno says why."""


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """One bpf(2) call with ``attr`` (a ctypes buffer); its result, or BpfError."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(errno.ENOSYS, "bpf(2) on %s is not known to this module" % platform.machine())
    r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise BpfError(e, "bpf(%d): %s" % (cmd, os.strerror(e)))
    return int(r)


class MapInfo:
    """What the kernel says of a map: its kind, sizes, flags and name."""

    def __init__(self, raw: bytes) -> None:
        self.type, self.id, self.key_size, self.value_size, self.max_entries, self.flags, name = _MAP_INFO.unpack_from(raw)
        self.name = name.split(b"\0", 1)[0].decode(errors="replace")


def _obj_info(fd: int, size: int) -> bytes:
    """The kernel's struct bpf_{map,prog}_info of the object behind ``fd`` (its first ``size`` bytes)."""
    info = ctypes.create_string_buffer(size)
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("=IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info.raw


def map_info(fd: int) -> MapInfo:
    return MapInfo(_obj_info(fd, 88))


def prog_id(fd: int) -> int:
    """The id of the program behind ``fd`` (struct bpf_prog_info: type, id, ...)."""
    return struct.unpack_from("=I", _obj_info(fd, 256), 4)[0]


def map_fd_by_id(map_id: int, readonly: bool = False) -> int:
    """A new file descriptor of the map with this id (the caller closes it)."""
    attr = ctypes.create_string_buffer(12)
    struct.pack_into("=III", attr, 0, map_id, 0, BPF_F_RDONLY if readonly else 0)
    return bpf(BPF_MAP_GET_FD_BY_ID, attr)


def _found(cmd: int, attr: ctypes.Array) -> int | None:
    """bpf(2)'s result, or None if what it names does not exist (ENOENT)."""
    try:
        return bpf(cmd, attr)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def _exists(cmd: int, obj_id: int) -> bool:
    attr = ctypes.create_string_buffer(12)
    struct.pack_into("=III", attr, 0, obj_id, 0, 0)
    fd = _found(cmd, attr)
    if fd is None:
        return False
    os.close(fd)
    return True


def prog_exists(prog_id: int) -> bool:
    """Whether a BPF program with this id is loaded (tests check that none of ours is left)."""
    return _exists(BPF_PROG_GET_FD_BY_ID, prog_id)


def map_exists(map_id: int) -> bool:
    return _exists(BPF_MAP_GET_FD_BY_ID, map_id)


def _elem_attr(fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> tuple[ctypes.Array, ctypes.Array]:
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ctypes.addressof(kbuf), ctypes.addressof(value) if value is not None else 0, flags)
    return attr, kbuf


def update_elem(fd: int, key: bytes, value: bytes) -> None:
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr, _keep = _elem_attr(fd, key, vbuf, BPF_ANY)
    bpf(BPF_MAP_UPDATE_ELEM, attr)


def delete_elem(fd: int, key: bytes) -> bool:
    """Remove an element; False if there was none."""
    attr, _keep = _elem_attr(fd, key, None)
    return _found(BPF_MAP_DELETE_ELEM, attr) is not None


def lookup_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    vbuf = ctypes.create_string_buffer(value_size)
    attr, _keep = _elem_attr(fd, key, vbuf)
    return None if _found(BPF_MAP_LOOKUP_ELEM, attr) is None else vbuf.raw


def map_memory(fd: int, size: int, writable: bool) -> mmap.mmap:
    """The first ``size`` bytes of an mmappable array map, shared with the kernel."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)


def test_run(prog_fd: int, frame: bytes, ifindex: int = 0) -> tuple[int, bytes, int]:
    """Run a TC program once on an Ethernet frame (BPF_PROG_TEST_RUN), as if it came in on
    ``ifindex`` of the calling thread's namespace: (its return code, the frame after it, the mark
    it left).  Nothing is sent; what it writes to maps stays."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 512)
    ctx_in = ctypes.create_string_buffer(SKB_CTX_SIZE)
    ctx_out = ctypes.create_string_buffer(SKB_CTX_SIZE)
    struct.pack_into("=I", ctx_in, SKB_IFINDEX, ifindex)
    attr = ctypes.create_string_buffer(80)
    struct.pack_into("=IIIIQQII", attr, 0, prog_fd, 0, len(frame), len(data_out), ctypes.addressof(data_in), ctypes.addressof(data_out), 1, 0)
    struct.pack_into("=IIQQ", attr, 40, SKB_CTX_SIZE, SKB_CTX_SIZE, ctypes.addressof(ctx_in), ctypes.addressof(ctx_out))
    bpf(BPF_PROG_TEST_RUN, attr)
    retval, size_out = struct.unpack_from("=I4xI", attr, 4)
    return retval, data_out.raw[:size_out], struct.unpack_from("=I", ctx_out, SKB_MARK)[0]
