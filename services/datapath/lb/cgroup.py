"""cgroup BPF attachment through the bpf() syscall: attach (or atomically replace), query, detach.

Programs are attached the legacy way (``BPF_PROG_ATTACH`` with ``BPF_F_ALLOW_MULTI``), so they stay
attached after the agent exits — a restarted agent finds them by asking the cgroup which programs it
runs and which maps those use (``BPF_PROG_QUERY`` → ``BPF_OBJ_GET_INFO_BY_FD``): a program that uses
one of the node's pinned LB maps is the node's. It is replaced in place (``BPF_F_REPLACE``, no
moment without translation), duplicates are detached, and ``cleanup_all`` detaches them the same
way — from the pins alone, so a crashed agent's programs go too.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from services.datapath.bpfsys import BpfError

__all__ = [
    "ATTACH_TYPES",
    "AttachedProg",
    "attach",
    "cgroup2_root",
    "detach",
    "map_id",
    "prog_info",
    "query",
]

_SYS_BPF = 321  # x86_64
_PROG_ATTACH = 8
_PROG_DETACH = 9
_PROG_GET_FD_BY_ID = 13
_OBJ_GET_INFO_BY_FD = 15
_PROG_QUERY = 16
F_ALLOW_MULTI = 2
F_REPLACE = 4

# attach type (uapi enum bpf_attach_type) → program name in bpf/nm_sock.c
ATTACH_TYPES: dict[int, str] = {
    10: "nm_lb_connect4",  # BPF_CGROUP_INET4_CONNECT
    14: "nm_lb_sendmsg4",  # BPF_CGROUP_UDP4_SENDMSG
    19: "nm_lb_recvmsg4",  # BPF_CGROUP_UDP4_RECVMSG
    29: "nm_lb_getpeer4",  # BPF_CGROUP_INET4_GETPEERNAME
    8: "nm_lb_bind4",  # BPF_CGROUP_INET4_BIND
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("pad", ctypes.c_uint32 * 7),
    ]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _ProgInfo(ctypes.Structure):
    # the head of struct bpf_prog_info (uapi), up to the name
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    rc = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf({what}): {os.strerror(err)}")
    return rc


def cgroup2_root() -> str:
    """Where cgroup v2 is mounted: ``/sys/fs/cgroup/unified`` on a hybrid layout,
    ``/sys/fs/cgroup`` on a unified one (the first cgroup2 mount in /proc/self/mounts)."""
    with open("/proc/self/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    raise FileNotFoundError(errno.ENOENT, "no cgroup2 mount (socket load-balancing needs cgroup v2)")


@dataclass(frozen=True)
class AttachedProg:
    id: int
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int) -> AttachedProg:
    maps = (ctypes.c_uint32 * 64)()
    info = _ProgInfo(nr_map_ids=64, map_ids=ctypes.addressof(maps))
    _bpf(_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
         "prog info")  # fmt: skip
    n = min(int(info.nr_map_ids), 64)
    return AttachedProg(
        int(info.id), info.name.decode(errors="replace"), tuple(int(maps[i]) for i in range(n))
    )


def map_id(fd: int) -> int:
    info = _MapInfo()
    _bpf(_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
         "map info")  # fmt: skip
    return int(info.id)


def _prog_fd(prog_id: int) -> int:
    return _bpf(_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id), f"prog fd by id {prog_id}")


def query(cgroup_fd: int, attach_type: int) -> list[AttachedProg]:
    """The programs attached to the cgroup itself for ``attach_type`` (in run order)."""
    ids = (ctypes.c_uint32 * 256)()
    attr = _QueryAttr(
        target_fd=cgroup_fd, attach_type=attach_type, prog_ids=ctypes.addressof(ids), prog_cnt=256
    )
    _bpf(_PROG_QUERY, attr, "prog query")
    out = []
    for i in range(int(attr.prog_cnt)):
        try:
            fd = _prog_fd(int(ids[i]))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                continue  # detached meanwhile
            raise
        try:
            out.append(prog_info(fd))
        finally:
            os.close(fd)
    return out


def attach(cgroup_fd: int, prog_fd: int, attach_type: int, replace_id: int = 0) -> None:
    """Attach with BPF_F_ALLOW_MULTI; with ``replace_id``, atomically in that program's place."""
    attr = _AttachAttr(target_fd=cgroup_fd, attach_bpf_fd=prog_fd, attach_type=attach_type,
                       attach_flags=F_ALLOW_MULTI)  # fmt: skip
    if not replace_id:
        _bpf(_PROG_ATTACH, attr, "prog attach")
        return
    old = _prog_fd(replace_id)
    try:
        attr.attach_flags = F_ALLOW_MULTI | F_REPLACE
        attr.replace_bpf_fd = old
        _bpf(_PROG_ATTACH, attr, "prog attach (replace)")
    finally:
        os.close(old)


def detach(cgroup_fd: int, prog_id: int, attach_type: int) -> bool:
    """Detach one program by id; False if it was not attached (any more)."""
    try:
        fd = _prog_fd(prog_id)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    try:
        _bpf(
            _PROG_DETACH,
            _AttachAttr(target_fd=cgroup_fd, attach_bpf_fd=fd, attach_type=attach_type),
            "detach",
        )
        return True
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    finally:
        os.close(fd)
