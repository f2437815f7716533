"""Remove everything a node's datapath made: pod netns and veths, socket programs on the cgroup v2
root, pinned maps, the node address.

``cleanup_all(data_dir)`` accepts a node data dir (``<cluster>/nodes/<node>``) or a cluster data
dir (then every ``nodes/*``). It works from the state files the datapath writes (``datapath.json``,
``ipam.json``, ``cni-endpoints.json``), so it also cleans up after a crashed or killed agent.
Idempotent; never raises for something already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodemesh.netns import host_ifname, netns_name
from nodemesh.nodestate import STATE_FILE, read_datapath_state
from services.datapath.pods.netns import delete_pod_netns

__all__ = ["cleanup_all", "cleanup_node"]

log = logging.getLogger("nodemesh.datapath.cleanup")


def cleanup_node(node_dir: Path) -> None:
    state = read_datapath_state(node_dir)
    if state is None:
        return
    node, scope = state.node, state.scope
    try:
        pods = json.loads((node_dir / "ipam.json").read_text()).get("pods", {})
    except (FileNotFoundError, ValueError, AttributeError):
        pods = {}
    _kill_workloads(node_dir / "pods")
    for key in pods:
        ns, _, name = str(key).partition("/")
        try:
            delete_pod_netns(netns_name(node, ns, name, scope), host_ifname(node, ns, name, scope))
        except Exception as e:
            log.warning("removing pod %s: %s", key, e)
    _remove_cni_links(node_dir)
    pin_dir = state.pin_dir
    if pin_dir.startswith("/sys/fs/bpf/"):
        _detach_socket_programs(pin_dir)  # before the pins go: they say which programs are the node's
        shutil.rmtree(pin_dir, ignore_errors=True)
        if scope and os.path.basename(os.path.dirname(pin_dir)) == scope:
            scope_dir = os.path.dirname(pin_dir)
            with contextlib.suppress(OSError):
                shared = {"nm_proxy_flows", "nm_proxy_active"}  # shared by the nodes (L7 redirect)
                if set(os.listdir(scope_dir)) <= shared:
                    for name in shared & set(os.listdir(scope_dir)):
                        os.unlink(os.path.join(scope_dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(scope_dir)  # the scope dir, once its last node is gone
    addrs = [state.node_ip, state.router_ip]
    if state.local_mode:
        with IPRoute() as ipr:
            for a in addrs:
                if not a or a == "127.0.0.1":
                    continue
                try:
                    ipr.addr("del", index=ipr.link_lookup(ifname="lo")[0], address=a, prefixlen=32)
                except NetlinkError as e:
                    if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                        log.warning("removing address %s from lo: %s", a, e)
    for f in ("ipam.json", STATE_FILE, "nodeids.json", "cni-endpoints.json"):
        (node_dir / f).unlink(missing_ok=True)


def _remove_cni_links(node_dir: Path) -> None:
    """Kubernetes mode: the veths this node made for standalone CNI endpoints (the runtime owns the
    namespaces, and chained veths belong to the cluster's plugin)."""
    from services.datapath.cni.store import CniStore

    for rec in CniStore(node_dir / "cni-endpoints.json").records.values():
        if rec.mode != "standalone":
            continue
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=rec.host_ifname):
                try:
                    ipr.link("del", index=idx)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        log.warning("removing %s: %s", rec.host_ifname, e)


def _detach_socket_programs(pin_dir: str) -> None:
    """The node's Service load-balancing programs on the cgroup v2 root (services/datapath/lb)."""
    from services.datapath.lb.loader import detach_node

    try:
        detach_node(pin_dir)
    except Exception as e:
        log.warning("detaching socket programs of %s: %s", pin_dir, e)


def _kill_workloads(pod_dir: Path) -> None:
    """Stop local workloads a (possibly dead) agent left running, from their pid files; a pid is
    only killed if its environment still carries the pod uid marker (pids get reused)."""
    if not pod_dir.is_dir():
        return
    victims = []
    for f in pod_dir.glob("*.pid"):
        try:
            pid_s, uid = f.read_text().split()
            pid = int(pid_s)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        if f"NODEMESH_POD_UID={uid}".encode() in environ:
            victims.append(pid)
        f.unlink(missing_ok=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            os.path.exists(f"/proc/{p}/stat") and _running(p) for p in victims
        ):
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def cleanup_all(data_dir: str) -> None:
    # pyroute2 runs its own event loop: from a thread that already runs one, work in another thread
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _cleanup_all(data_dir)
        return
    t = threading.Thread(target=_cleanup_all, args=(data_dir,))
    t.start()
    t.join()


def _cleanup_all(data_dir: str) -> None:
    root = Path(data_dir)
    cleanup_node(root)
    nodes = root / "nodes"
    if nodes.is_dir():
        for d in sorted(nodes.iterdir()):
            cleanup_node(d)
    _drop_proxy_route_if_unused()
    _detach_orphan_socket_programs()


def _detach_orphan_socket_programs() -> None:
    """Socket programs whose pinned maps are gone (a pin directory removed by hand, a node dir
    lost): nothing else could ever detach them, and they sit on every socket of the machine."""
    from services.datapath.lb.loader import detach_orphans

    try:
        n = detach_orphans()
    except Exception as e:
        log.warning("detaching orphaned socket programs: %s", e)
        return
    if n:
        log.info("detached %d orphaned socket programs", n)


def _drop_proxy_route_if_unused() -> None:
    """The L7 proxy route (services/datapath/l7redirect.py) is shared by every datapath on the host:
    remove it once no loaded node is left (each has an ``nm_proxy_flows`` pin one level above its
    node directory)."""
    import glob

    from services.datapath.l7redirect import remove_proxy_route

    if any(glob.glob(p) for p in ("/sys/fs/bpf/*/nm_proxy_flows", "/sys/fs/bpf/*/*/nm_proxy_flows")):
        return
    try:
        remove_proxy_route()
    except Exception as e:
        log.warning("removing the L7 proxy route: %s", e)
