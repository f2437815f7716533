"""The bpf() syscall for pinned maps, through ctypes: open a pin, lookup/update/delete, iterate.

The agent writes the pinned maps with this (not through a BCC object), so the map layer, the CLI and
``cleanup_all`` work without compiling anything, and a restarted agent can read what is enforced.
Errors are :class:`BpfError` with the errno; a missing key is :class:`KeyNotFound` (ENOENT).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["BpfError", "KeyNotFound", "MapFd", "obj_get", "percpu_u64_sum", "possible_cpus"]

_SYS_BPF = 321  # x86_64
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_GET = 7
_OBJ_GET_INFO_BY_FD = 15

BPF_ANY = 0
# map types whose lookup returns one value per possible CPU, each rounded up to 8 bytes
_PERCPU_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() syscall failed."""


class KeyNotFound(BpfError, KeyError):
    """The key is not in the map (ENOENT), as a dict's KeyError."""


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _call(cmd: int, attr: ctypes.Structure, what: str) -> int:
    rc = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        cls = KeyNotFound if err == errno.ENOENT and cmd != _OBJ_GET else BpfError
        raise cls(err, f"bpf({what}): {os.strerror(err)}")
    return rc


def obj_get(path: str) -> int:
    """An fd for the object pinned at ``path`` (FileNotFoundError if nothing is pinned there)."""
    buf = ctypes.create_string_buffer(path.encode())
    attr = _ObjAttr(pathname=ctypes.addressof(buf))
    try:
        return _call(_OBJ_GET, attr, f"obj_get {path}")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"no BPF object pinned at {path}") from e
        raise


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU value count), from /sys/devices/system/cpu/possible."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class MapFd:
    """An open BPF map: raw-bytes operations on fixed-size keys and values."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = _MapInfo()
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        _call(_OBJ_GET_INFO_BY_FD, attr, "obj_get_info_by_fd")
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        self.map_type = int(info.type)
        self.name = info.name.decode(errors="replace")
        # what a lookup writes: the kernel fills every CPU's slot of a per-CPU map
        self.lookup_size = (
            ((self.value_size + 7) // 8 * 8) * possible_cpus()
            if self.map_type in _PERCPU_TYPES
            else self.value_size
        )
        self._kbuf = ctypes.create_string_buffer(self.key_size)
        self._vbuf = ctypes.create_string_buffer(self.value_size)
        self._uattr = _ElemAttr(
            map_fd=fd, key=ctypes.addressof(self._kbuf), value=ctypes.addressof(self._vbuf)
        )
        self._dattr = _ElemAttr(map_fd=fd, key=ctypes.addressof(self._kbuf), value=0)
        self._uattr_ref = ctypes.byref(self._uattr)
        self._dattr_ref = ctypes.byref(self._dattr)

    @classmethod
    def pinned(cls, path: str) -> MapFd:
        return cls(obj_get(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _attr(
        self, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char] | None, flags: int = 0
    ) -> _ElemAttr:
        return _ElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(key),
            value=ctypes.addressof(value) if value is not None else 0,
            flags=flags,
        )

    def lookup(self, key: bytes) -> bytes:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.lookup_size)
        _call(_MAP_LOOKUP_ELEM, self._attr(k, v), f"lookup {self.name}")
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        # The hot path of bulk applies: reuse one attr and two buffers (callers hold the GIL, so
        # no other thread writes them between memmove and the syscall returning).
        if len(key) != self.key_size or len(value) != self.value_size:
            raise ValueError(f"{self.name}: key/value must be {self.key_size}/{self.value_size} bytes")
        ctypes.memmove(self._kbuf, key, self.key_size)
        ctypes.memmove(self._vbuf, value, self.value_size)
        self._uattr.flags = flags
        rc = int(_libc.syscall(_SYS_BPF, _MAP_UPDATE_ELEM, self._uattr_ref, ctypes.sizeof(_ElemAttr)))
        if rc < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"bpf(update {self.name}): {os.strerror(err)}")

    def delete(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key must be {self.key_size} bytes")
        ctypes.memmove(self._kbuf, key, self.key_size)
        rc = int(_libc.syscall(_SYS_BPF, _MAP_DELETE_ELEM, self._dattr_ref, ctypes.sizeof(_ElemAttr)))
        if rc < 0:
            err = ctypes.get_errno()
            cls = KeyNotFound if err == errno.ENOENT else BpfError
            raise cls(err, f"bpf(delete {self.name}): {os.strerror(err)}")

    def keys(self) -> Iterator[bytes]:
        """Every key (a snapshot walk; entries changed meanwhile may be missed or repeated)."""
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        first = True
        while True:
            attr = _ElemAttr(
                map_fd=self.fd, key=0 if first else ctypes.addressof(cur), value=ctypes.addressof(nxt)
            )
            try:
                _call(_MAP_GET_NEXT_KEY, attr, f"get_next_key {self.name}")
            except KeyNotFound:
                return
            first = False
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            try:
                yield k, self.lookup(k)
            except KeyNotFound:
                continue

    def clear(self) -> None:
        for k in list(self.keys()):
            try:
                self.delete(k)
            except KeyNotFound:
                pass


def percpu_u64_sum(m: MapFd, key: bytes) -> int:
    """A per-CPU map's u64 counter at ``key``, summed over CPUs (0 when the key is absent)."""
    try:
        raw = m.lookup(key)
    except KeyNotFound:
        return 0
    return sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))


_PROG_TEST_RUN = 10


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_CTX_IFINDEX = 40  # offsetof(struct __sk_buff, ifindex)


def prog_test_run(prog_fd: int, packet: bytes, *, repeat: int = 1, ifindex: int = 0) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN a tc program on ``packet``: (return code, mean ns per run).

    ``ifindex`` sets ``skb->ifindex`` through the ``__sk_buff`` context (the program looks the
    endpoint up by it)."""
    data = ctypes.create_string_buffer(packet, len(packet))
    out = ctypes.create_string_buffer(len(packet) + 256)
    ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
    ctypes.memmove(
        ctypes.addressof(ctx) + SKB_CTX_IFINDEX, ctypes.c_uint32(ifindex).value.to_bytes(4, "little"), 4
    )
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_size_out=len(out),
        data_in=ctypes.addressof(data),
        data_out=ctypes.addressof(out),
        repeat=repeat,
        ctx_size_in=SKB_CTX_SIZE if ifindex else 0,
        ctx_in=ctypes.addressof(ctx) if ifindex else 0,
    )
    _call(_PROG_TEST_RUN, attr, "prog_test_run")
    return int(attr.retval), int(attr.duration)
