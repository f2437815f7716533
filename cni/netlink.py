"""What the plugin itself reads and changes with netlink: the pod's veth, seen from both sides.

Work inside the pod's namespace runs in a throwaway thread that ``setns``-es first (namespaces are
per thread), so the plugin process never leaves the host namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.spec import ERR_IO, ERR_UNKNOWN_CONTAINER, CniError

__all__ = ["delete_host_link", "find_host_veth", "pod_has_ipv4"]

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in the network namespace at ``path`` (from another thread)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            error.append(CniError(ERR_UNKNOWN_CONTAINER, f"network namespace {path} not found", str(e)))
            return
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                error.append(CniError(ERR_IO, f"setns {path}: {os.strerror(err)}"))
                return
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=run, name="cni-netns")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _kind(link: object) -> str:
    info = link.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def find_host_veth(netns: str, ifname: str) -> tuple[int, str]:
    """Generic-veth chaining: the host side of the veth whose pod side is ``ifname`` in ``netns``.

    The pod side's ``IFLA_LINK`` is its peer's ifindex in the host namespace (where the previous
    plugin left it); the peer must be a veth in this (the host) namespace."""

    def pod_side() -> int:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                raise CniError(ERR_UNKNOWN_CONTAINER, f"no interface {ifname} in {netns}")
            link = ipr.get_links(idx[0])[0]
            if _kind(link) != "veth":
                kind = _kind(link) or "unknown"
                raise CniError(
                    100, f"{ifname} in {netns} is a {kind} link: generic-veth chaining needs a veth"
                )
            peer = link.get_attr("IFLA_LINK")
            if not peer:
                raise CniError(100, f"{ifname} in {netns} has no peer link")
            return int(peer)

    peer_idx = in_netns(netns, pod_side)
    with IPRoute() as ipr:
        try:
            link = ipr.get_links(peer_idx)[0]
        except NetlinkError as e:
            raise CniError(
                100, f"the peer of {ifname} (ifindex {peer_idx}) is not in the host namespace", str(e)
            ) from None
        if _kind(link) != "veth":
            raise CniError(100, f"host link {peer_idx} is not a veth")
        return peer_idx, str(link.get_attr("IFLA_IFNAME"))


def pod_has_ipv4(netns: str, ifname: str, ip: str) -> bool:
    def check() -> bool:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                return False
            return any(a.get_attr("IFA_ADDRESS") == ip for a in ipr.get_addr(index=idx[0], family=2))

    return in_netns(netns, check)


def delete_host_link(name: str) -> bool:
    """Delete a host link by name (its veth peer goes with it); False if there was none."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return False
        try:
            ipr.link("del", index=idx[0])
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            return False
        return True
