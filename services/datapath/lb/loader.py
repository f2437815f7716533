"""Adapter for ``bpf/nm_sock.c``: compile per node, attach to the cgroup v2 root, detach.

Compiled by BCC in a short-lived child process (:mod:`services.datapath.bpfcompile`), like the tc
programs: the agent keeps the program fds and the counters' map fd, never LLVM.

The maps are pinned in the node's pin directory (the same one as the tc programs'), so a restarted
agent reuses them: Services keep being translated by the programs still attached while it is down,
and its new programs replace those in place (``cgroup.attach(replace_id=…)``) — never a second copy.
Which attached programs are the node's is read from the kernel (programs using the node's pinned LB
maps), so it also works after a crash, and :func:`detach_node` needs nothing but the pin directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from services.datapath.bpfcompile import Loaded, ProgSpec, compile_and_load
from services.datapath.bpfsys import MapFd, percpu_u64_sum
from services.datapath.lb import cgroup
from services.datapath.lb.maps import LB_PINNED, STAT_NAMES, LbMaps
from services.datapath.loader import BPF_DIR

__all__ = ["SockLoader", "detach_node", "detach_orphans", "pinned_map_ids"]

log = logging.getLogger("nodemesh.datapath.lb")
_CGROUP_SOCK_ADDR = 18  # BPF_PROG_TYPE_CGROUP_SOCK_ADDR


def pinned_map_ids(pin_dir: str) -> set[int]:
    """Kernel ids of the node's pinned LB maps (empty when nothing is pinned)."""
    ids = set()
    for name in LB_PINNED:
        try:
            m = MapFd.pinned(os.path.join(pin_dir, name))
        except OSError:
            continue
        try:
            ids.add(cgroup.map_id(m.fd))
        finally:
            m.close()
    return ids


def _open_root(root: str | None) -> int:
    return os.open(root or cgroup.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)


def _detach_where(pred: Any, root: str | None = None) -> int:
    fd = _open_root(root)
    n = 0
    try:
        for attach_type in cgroup.ATTACH_TYPES:
            for p in cgroup.query(fd, attach_type):
                if pred(p) and cgroup.detach(fd, p.id, attach_type):
                    n += 1
    finally:
        os.close(fd)
    return n


def detach_node(pin_dir: str, root: str | None = None) -> int:
    """Detach the node's socket programs (those using its pinned LB maps); returns how many."""
    ids = pinned_map_ids(pin_dir)
    if not ids:
        return 0
    return _detach_where(lambda p: bool(ids & set(p.map_ids)), root)


def detach_orphans(bpffs: str = "/sys/fs/bpf", root: str | None = None) -> int:
    """Detach nodemesh socket programs whose maps are pinned nowhere any more (their agent and its
    pin directory are gone, e.g. removed by hand): nothing could update or remove them otherwise."""
    live: set[int] = set()
    for d, _dirs, files in os.walk(bpffs):
        if any(f in LB_PINNED for f in files):
            live |= pinned_map_ids(d)
    names = set(cgroup.ATTACH_TYPES.values())
    return _detach_where(lambda p: p.name in names and not (live & set(p.map_ids)), root)


class SockLoader:
    """One node's compiled socket programs, attached to the cgroup v2 root."""

    def __init__(self, pin_dir: str, *, bpf_dir: Path = BPF_DIR, cgroup_root: str = "",
                 defines: dict[str, int] | None = None) -> None:  # fmt: skip
        self.pin_dir = pin_dir
        self.bpf_dir = bpf_dir
        self.cgroup_root = cgroup_root
        self.defines = defines or {}
        self.loaded: Loaded | None = None
        self._stats: MapFd | None = None
        self.fds: dict[int, int] = {}  # attach type → program fd
        self.maps: LbMaps | None = None
        self.reused_pins = False
        self._owned: set[int] = set()  # map ids that mark a program as this node's

    def load(self) -> LbMaps:
        os.makedirs(self.pin_dir, exist_ok=True)
        self._owned = pinned_map_ids(self.pin_dir)  # before a stale pin is replaced
        self._drop_incompatible_pins()
        self.reused_pins = os.path.exists(os.path.join(self.pin_dir, "nm_lb_svc"))
        cflags = [f"-I{self.bpf_dir}", f'-DNM_PIN_DIR="{self.pin_dir}"', "-Wno-macro-redefined"]
        cflags += [f"-D{k}={v}" for k, v in self.defines.items()]
        progs = [ProgSpec(name, _CGROUP_SOCK_ADDR, at) for at, name in cgroup.ATTACH_TYPES.items()]
        self.loaded = compile_and_load(str(self.bpf_dir / "nm_sock.c"), cflags, progs, ["nm_lb_stats"])
        self.fds = {at: self.loaded.progs[name] for at, name in cgroup.ATTACH_TYPES.items()}
        self._stats = MapFd(os.dup(self.loaded.maps["nm_lb_stats"]))
        self._owned |= pinned_map_ids(self.pin_dir)
        self.maps = LbMaps(self.pin_dir)
        return self.maps

    def _drop_incompatible_pins(self) -> None:
        for name, (ks, vs) in LB_PINNED.items():
            path = os.path.join(self.pin_dir, name)
            try:
                m = MapFd.pinned(path)
            except OSError:
                continue
            try:
                same = (m.key_size, m.value_size) == (ks, vs)
            finally:
                m.close()
            if not same:
                log.warning("pinned LB map has another layout; recreating it", extra={"map": path})
                os.unlink(path)

    def attach(self) -> dict[str, int]:
        """Attach every program to the cgroup v2 root, in place of this node's previous ones.
        Returns how many previous programs were replaced and how many duplicates detached."""
        fd = _open_root(self.cgroup_root)
        replaced = dropped = 0
        try:
            for attach_type, prog_fd in self.fds.items():
                mine = [p for p in cgroup.query(fd, attach_type) if self._owned & set(p.map_ids)]
                new_id = cgroup.prog_info(prog_fd).id
                if any(p.id == new_id for p in mine):
                    continue  # already attached (attach() called twice)
                if mine:
                    cgroup.attach(fd, prog_fd, attach_type, replace_id=mine[0].id)
                    replaced += 1
                else:
                    cgroup.attach(fd, prog_fd, attach_type)
                for p in mine[1:]:  # copies a crashed start may have left
                    dropped += int(cgroup.detach(fd, p.id, attach_type))
        finally:
            os.close(fd)
        log.info("socket programs attached", extra={"replaced": replaced, "duplicates_detached": dropped})
        return {"replaced": replaced, "duplicates": dropped}

    def detach(self) -> int:
        """Detach this node's programs (``cleanup_all`` does the same from the pins alone)."""
        return _detach_where(lambda p: bool(self._owned & set(p.map_ids)), self.cgroup_root or None)

    def stats(self) -> dict[str, int]:
        """The programs' per-CPU counters, summed (they start at 0 with each load)."""
        if self._stats is None:
            return {}
        stats = self._stats
        return {name: percpu_u64_sum(stats, i.to_bytes(4, "little")) for i, name in enumerate(STAT_NAMES)}

    def close(self) -> None:
        """Release the compiled object; the programs stay attached and the maps pinned."""
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
            self.fds = {}
