"""BCC and netlink adapter: compile ``bpf/nm_tc.c`` once per node, attach it to pod veths, read events.

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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.datapath.bpfsys import MapFd
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

__all__ = ["BPF_DIR", "Loader", "attach_tc", "detach_tc"]

log = logging.getLogger("nodemesh.datapath.loader")

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
TC_INGRESS = "ffff:fff2"  # clsact ingress: packets the pod sends (from-pod)
TC_EGRESS = "ffff:fff3"  # clsact egress: packets going into the pod (to-pod)
_PRIO = 1
_HANDLE = 1
# BCC's compiler (LLVM) is not thread-safe: two loaders in one process (tests with two simulated
# nodes) must not compile at the same time.
_COMPILE_LOCK = threading.Lock()
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
        self.bpf: Any = None
        self.from_fd = -1
        self.to_fd = -1
        self.maps: NodeMaps | None = None
        self.reused_pins = False
        self._event_cb: Callable[[Event], None] | None = None

    def load(self) -> NodeMaps:
        from bcc import BPF  # imported here: only the privileged agent needs BCC

        os.makedirs(self.pin_dir, exist_ok=True)
        self._drop_incompatible_pins()
        self.reused_pins = os.path.exists(os.path.join(self.pin_dir, "nm_policy"))
        cflags = [f"-I{self.bpf_dir}", f'-DNM_PIN_DIR="{self.pin_dir}"', "-Wno-macro-redefined"]
        # maps every node of the cluster shares (L7 redirect: nm_proxy_flows) live one level up
        cflags.append(f'-DNM_SHARED_PIN_DIR="{os.path.dirname(self.pin_dir)}"')
        cflags += [f"-D{k}={v}" for k, v in self.defines.items()]
        with _COMPILE_LOCK:
            self.bpf = BPF(src_file=str(self.bpf_dir / "nm_tc.c").encode(), cflags=cflags)
            self.from_fd = self.bpf.load_func(b"nm_from_pod", BPF.SCHED_CLS).fd
            self.to_fd = self.bpf.load_func(b"nm_to_pod", BPF.SCHED_CLS).fd
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

        def cb(_ctx: Any, data: Any, _size: int) -> None:
            if self._event_cb is not None:
                self._event_cb(Event.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(Event))))

        self.bpf["nm_events"].open_ring_buffer(cb)

    def poll(self, timeout_ms: int = 100) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        self.bpf.ring_buffer_consume()

    def drops(self) -> dict[int, int]:
        """Drop counts by reason, summed over CPUs."""
        table = self.bpf["nm_drops"]
        out: dict[int, int] = {}
        for k, v in table.items():
            total = sum(int(x) for x in v)
            if total:
                out[int(k.value)] = total
        return out

    def stat(self, index: int) -> int:
        table = self.bpf["nm_stats"]
        return int(sum(int(x) for x in table[ctypes.c_int(index)]))

    def close(self) -> None:
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self._event_cb = None
