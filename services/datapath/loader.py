"""Loader and netlink adapter: compile ``bpf/nm_tc.c`` once per node, attach it to pod veths, read events.

BCC compiles in a short-lived child process (:mod:`services.datapath.bpfcompile`), so LLVM is never
mapped into the agent; the agent holds the program fds and the unpinned maps' fds the child handed
over, and reads the ring buffer and per-CPU counters with the bpf() syscall layer.
The program's verdict maps are pinned in ``/sys/fs/bpf/nodemesh/<node>/`` (BCC reuses a pin that
exists), so a restarted agent compiles, re-attaches with ``tc filter replace`` (atomic: the old
program runs until the new one takes its place) and keeps every entry: enforcement never stops and
never opens. Drop counters, stats and the ring buffer belong to the loaded program and start at 0.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.datapath.bpfcompile import Loaded, ProgSpec, compile_and_load
from services.datapath.bpfsys import MapFd, percpu_u64_sum
from services.datapath.maps import (
    BPFFS_ROOT,
    AuthKey,
    AuthValue,
    CtEntry,
    CtKey,
    EndpointInfo,
    EndpointKey,
    Event,
    IPCacheKey,
    IPCacheValue,
    NodeMaps,
    PolicyKeyC,
    PolicyValueC,
    pin_dir,
)
from services.datapath.ringbuf import RingBuf

__all__ = ["BPF_DIR", "Loader", "attach_tc", "detach_tc"]
_EVENT_SIZE = ctypes.sizeof(Event)

log = logging.getLogger("nodemesh.datapath.loader")

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
TC_INGRESS = "ffff:fff2"  # clsact ingress: packets the pod sends (from-pod)
TC_EGRESS = "ffff:fff3"  # clsact egress: packets going into the pod (to-pod)
_PRIO = 1
_HANDLE = 1
SCHED_CLS = 3  # BPF_PROG_TYPE_SCHED_CLS
_PRIVATE_MAPS = ["nm_events", "nm_drops", "nm_stats"]  # the loaded program's own (unpinned) maps
PINNED_LAYOUT: dict[str, tuple[type[ctypes.Structure], type[ctypes.Structure] | type[ctypes.c_uint32]]] = {
    "nm_endpoints": (EndpointKey, EndpointInfo),
    "nm_ipcache": (IPCacheKey, IPCacheValue),
    "nm_policy": (PolicyKeyC, PolicyValueC),
    "nm_ct": (CtKey, CtEntry),
    "nm_auth": (AuthKey, AuthValue),
    "nm_config": (ctypes.c_uint32, ctypes.c_uint32),  # type: ignore[dict-item]
}


def attach_tc(ifindex: int, from_fd: int, to_fd: int, ipr: IPRoute | None = None) -> None:
    """Attach (or atomically replace) both programs on one host-side veth."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        for parent, fd, name in ((TC_INGRESS, from_fd, "nm_from_pod"), (TC_EGRESS, to_fd, "nm_to_pod")):
            ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                _HANDLE,
                fd=fd,
                name=name,
                parent=parent,
                prio=_PRIO,
                protocol=0x0003,  # ETH_P_ALL
                classid=1,
                direct_action=True,
            )
    finally:
        if own:
            ipr.close()


def detach_tc(ifindex: int, ipr: IPRoute | None = None) -> None:
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise
    finally:
        if own:
            ipr.close()


class Loader:
    """One node's compiled programs, its pinned maps and its event ring buffer."""

    def __init__(
        self,
        node: str,
        *,
        pin_root: str = BPFFS_ROOT,
        bpf_dir: Path = BPF_DIR,
        defines: dict[str, int] | None = None,
        scope: str = "",
    ) -> None:
        self.node = node
        self.scope = scope
        # <root>/<scope>/<node>: one directory per agent, so two local clusters never share maps
        self.pin_dir = pin_dir(node, os.path.join(pin_root, scope) if scope else pin_root)
        self.bpf_dir = bpf_dir
        self.defines = defines or {}
        self.loaded: Loaded | None = None
        self.from_fd = -1
        self.to_fd = -1
        self.maps: NodeMaps | None = None
        self.reused_pins = False
        self._event_cb: Callable[[Event], None] | None = None
        self._ring: RingBuf | None = None
        self._drops: MapFd | None = None
        self._stats: MapFd | None = None

    def load(self) -> NodeMaps:
        os.makedirs(self.pin_dir, exist_ok=True)
        self._drop_incompatible_pins()
        self.reused_pins = os.path.exists(os.path.join(self.pin_dir, "nm_policy"))
        cflags = [f"-I{self.bpf_dir}", f'-DNM_PIN_DIR="{self.pin_dir}"', "-Wno-macro-redefined"]
        # maps every node of the cluster shares (L7 redirect: nm_proxy_flows) live one level up
        cflags.append(f'-DNM_SHARED_PIN_DIR="{os.path.dirname(self.pin_dir)}"')
        cflags += [f"-D{k}={v}" for k, v in self.defines.items()]
        progs = [ProgSpec("nm_from_pod", SCHED_CLS), ProgSpec("nm_to_pod", SCHED_CLS)]
        self.loaded = compile_and_load(str(self.bpf_dir / "nm_tc.c"), cflags, progs, _PRIVATE_MAPS)
        self.from_fd = self.loaded.progs["nm_from_pod"]
        self.to_fd = self.loaded.progs["nm_to_pod"]
        self._drops = MapFd(os.dup(self.loaded.maps["nm_drops"]))
        self._stats = MapFd(os.dup(self.loaded.maps["nm_stats"]))
        self.maps = NodeMaps(self.pin_dir)
        log.info("programs loaded", extra={"pin_dir": self.pin_dir, "reused_pins": self.reused_pins})
        return self.maps

    def _drop_incompatible_pins(self) -> None:
        """A pin left by a build with another struct layout cannot be reused (BCC would refuse to
        load): unpin it so a fresh map is created. The agent rewrites every entry once synced."""
        for name, (key_t, value_t) in PINNED_LAYOUT.items():
            path = os.path.join(self.pin_dir, name)
            if not os.path.exists(path):
                continue
            try:
                m = MapFd.pinned(path)
            except OSError:
                continue
            try:
                same = (m.key_size, m.value_size) == (ctypes.sizeof(key_t), ctypes.sizeof(value_t))
                # a policy map of another size (policy_map_max changed) is recreated too
                if name == "nm_policy" and "NM_POLICY_MAX" in self.defines:
                    same = same and m.max_entries == self.defines["NM_POLICY_MAX"]
            finally:
                m.close()
            if not same:
                log.warning("pinned map has another layout; recreating it", extra={"map": path})
                os.unlink(path)

    def attach(self, ifindex: int, ipr: IPRoute | None = None) -> None:
        attach_tc(ifindex, self.from_fd, self.to_fd, ipr)

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback`` with a copy of every ring-buffer event (from :meth:`poll`'s thread).

        The ring buffer is opened once; a later call only replaces the callback."""
        first = self._event_cb is None
        self._event_cb = callback
        if not first:
            return

        assert self.loaded is not None, "load() first"
        m = MapFd(os.dup(self.loaded.maps["nm_events"]))
        try:
            self._ring = RingBuf(m)
        finally:
            m.close()  # the mmaps and the epoll registration keep their own references

    def _on_record(self, data: bytes) -> None:
        if self._event_cb is not None and len(data) >= _EVENT_SIZE:
            self._event_cb(Event.from_buffer_copy(data[:_EVENT_SIZE]))

    def poll(self, timeout_ms: int = 100) -> None:
        if self._ring is not None:
            self._ring.poll(self._on_record, timeout_ms)

    def consume(self) -> None:
        if self._ring is not None:
            self._ring.consume(self._on_record)

    def drops(self) -> dict[int, int]:
        """Drop counts by reason, summed over CPUs."""
        assert self._drops is not None, "load() first"
        out: dict[int, int] = {}
        for reason in range(self._drops.max_entries):
            total = percpu_u64_sum(self._drops, reason.to_bytes(4, "little"))
            if total:
                out[reason] = total
        return out

    def stat(self, index: int) -> int:
        assert self._stats is not None, "load() first"
        return percpu_u64_sum(self._stats, index.to_bytes(4, "little"))

    @property
    def is_loaded(self) -> bool:
        return self.loaded is not None

    def close(self) -> None:
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for m in (self._drops, self._stats):
            if m is not None:
                m.close()
        self._drops = self._stats = None
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
            self.from_fd = self.to_fd = -1
        self._event_cb = None
