"""Leaving nothing behind: the processes, namespaces and mounts of one local cluster.

Every process the supervisor starts carries ``NODEMESH_CLUSTER_DATA_DIR=<data dir>`` in its
environment, and children inherit it, so :func:`cluster_pids` finds them even when the supervisor
itself was killed. Network namespaces and links are the datapath's: its hook
``services.datapath.cleanup.cleanup_all(data_dir)`` removes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

__all__ = [
    "MARKER_ENV",
    "all_cluster_pids",
    "cleanup_datapath",
    "cluster_pids",
    "kill_pids",
    "mounts_under",
    "pid_alive",
    "remove_extra_nodes",
    "unmount_under",
]

log = logging.getLogger("localcluster")
MARKER_ENV = "NODEMESH_CLUSTER_DATA_DIR"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cluster_pids(data_dir: Path, exclude: tuple[int, ...] = ()) -> list[int]:
    """Live processes whose environment marks them as part of the cluster in ``data_dir``."""
    return all_cluster_pids(exclude).get(str(data_dir), [])


def all_cluster_pids(exclude: tuple[int, ...] = ()) -> dict[str, list[int]]:
    """Every local cluster's live processes on this machine, by the data directory they mark."""
    prefix = f"{MARKER_ENV}=".encode()
    skip = {os.getpid(), *exclude}
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(prefix) and pid_alive(int(entry)):
                found.setdefault(var[len(prefix) :].decode(errors="replace"), []).append(int(entry))
                break
    return found


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each process (and its process group), then SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        if not any(pid_alive(p) for p in pids):
            return


def cleanup_datapath(data_dir: Path) -> None:
    """Run the datapath's cleanup (namespaces, links, pinned maps, cgroup programs)."""
    # imported here: it loads netlink (pyroute2), which `nodemesh status` has no use for
    from services.datapath.cleanup import cleanup_all

    try:
        cleanup_all(str(data_dir))
    except Exception:
        log.exception("datapath cleanup failed")


def remove_extra_nodes(data_dir: Path, nodes: int) -> list[str]:
    """Before a start with ``nodes`` nodes: delete what nodes beyond it kept (``nodes/node-<i>``,
    i > nodes: IPAM, authd keys, Envoy bootstrap), after the datapath cleanup of anything they left."""
    extra = sorted(
        p
        for p in (data_dir / "nodes").glob("node-*")
        if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) > nodes
    )
    if extra:
        cleanup_datapath(data_dir)  # reads each node's datapath.json: before the directories go
        for p in extra:
            shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in extra]


def mounts_under(data_dir: Path) -> list[str]:
    """Mount points inside ``data_dir`` (deepest first)."""
    prefix = str(data_dir).rstrip("/") + "/"
    points: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 4 and (parts[4] + "/").startswith(prefix):
                points.append(parts[4])
    return sorted(set(points), key=len, reverse=True)


def unmount_under(data_dir: Path) -> None:
    for point in mounts_under(data_dir):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
