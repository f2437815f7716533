"""Network namespaces and veth pairs for pods, with pyroute2 (no ``ip netns exec``: it remounts /sys).

A pod gets: netns ``nm-<hash>``, a veth pair (host side ``lxc<11 hex>``, pod side ``eth0``), its IPv4
address as a /32 on eth0, a link-local gateway ``169.254.1.1`` reached through a permanent neighbour
entry (the host-side MAC), and a default route via it. The host gets a /32 route to the pod and a
permanent neighbour for it, and forwarding is switched on for the lxc device only (the kernel checks
forwarding on the input device), so nothing host-wide changes.

:func:`netns_socket` opens a socket inside a namespace from a throwaway thread (network namespaces
are per thread), so probes and tests talk from the pod's point of view while this process stays in
the host namespace, where the pinned BPF maps are visible.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2 import config as pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError

from nodemesh.netns import netns_exists, netns_path

# pyroute2 forks a child per netns operation and stops it with SIGTERM. Without this the child
# keeps the parent's Python SIGTERM handler, whose signal byte goes to the *parent's* wakeup fd
# (inherited): the agent's event loop then sees a SIGTERM of its own and stops cleanly (exit 0)
# every time a pod is plumbed. The child must die of the signal instead.
pyroute2_config.disable_mp_signal = True

__all__ = [
    "GATEWAY",
    "PodLink",
    "create_pod_netns",
    "delete_pod_netns",
    "netns_socket",
    "plumb_veth",
]

GATEWAY = "169.254.1.1"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class PodLink:
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    ip: str


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_socket(
    name: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket created inside netns ``name`` (usable from any thread afterwards)."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(socket.socket(family, type, proto))
        except BaseException as e:
            result.append(e)
        # The thread ends here; its namespace dies with it, the process's other threads never moved.

    t = threading.Thread(target=run, name=f"netns-{name}")
    t.start()
    t.join()
    r = result[0]
    if isinstance(r, BaseException):
        raise r
    return r


def _sysctl(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def create_pod_netns(name: str, host_if: str, ip: str, host_src: str = "") -> PodLink:
    """Create (or adopt, when it already exists from a previous run) the pod's netns and veth.

    ``host_src``: the source address for host → pod traffic (the node's router IP, ``.1`` of its pod
    CIDR, on ``lo``), so host-originated packets (the node's Envoy, probes from the host) carry an
    address the ipcache knows as ``host`` / ``remote-node`` instead of whatever the kernel picks."""
    if not netns_exists(name):
        netns.create(name)
    return plumb_veth(name, host_if, ip, host_src)


def plumb_veth(ns: str, host_if: str, ip: str, host_src: str = "", pod_if: str = "eth0") -> PodLink:
    """The veth, address, routes and neighbours of a pod whose netns exists: ``ns`` is a name under
    /run/netns or, for a container runtime's namespace (CNI_NETNS), an absolute path. Idempotent."""
    tmp_peer = f"p{host_if[3:]}"
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=host_if)
        if not idx:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": tmp_peer, "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=host_if)
        host_idx = idx[0]
        host_mac = ipr.get_links(host_idx)[0].get_attr("IFLA_ADDRESS")
    with IPRoute(netns=ns) as nsr:
        lo = nsr.link_lookup(ifname="lo")
        if lo:
            nsr.link("set", index=lo[0], state="up")
        peer = nsr.link_lookup(ifname=tmp_peer) or nsr.link_lookup(ifname=pod_if)
        pidx = peer[0]
        nsr.link("set", index=pidx, ifname=pod_if)
        nsr.link("set", index=pidx, state="up")
        pod_mac = nsr.get_links(pidx)[0].get_attr("IFLA_ADDRESS")
        try:
            nsr.addr("add", index=pidx, address=ip, prefixlen=32)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        nsr.neigh("replace", dst=GATEWAY, lladdr=host_mac, ifindex=pidx, state="permanent")
        nsr.route("replace", dst=f"{GATEWAY}/32", oif=pidx, scope="link")
        nsr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY, oif=pidx)
    with IPRoute() as ipr:
        ipr.link("set", index=host_idx, state="up")
        _sysctl(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "1")
        ipr.neigh("replace", dst=ip, lladdr=pod_mac, ifindex=host_idx, state="permanent")
        if host_src:
            ipr.route("replace", dst=f"{ip}/32", oif=host_idx, scope="link", prefsrc=host_src)
        else:
            ipr.route("replace", dst=f"{ip}/32", oif=host_idx, scope="link")
    return PodLink(ns, host_if, host_idx, host_mac, pod_mac, ip)


def delete_pod_netns(name: str, host_if: str) -> None:
    """Remove the veth (its peer and the host route go with it) and the namespace; idempotent."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=host_if)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
    if netns_exists(name):
        try:
            netns.remove(name)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
