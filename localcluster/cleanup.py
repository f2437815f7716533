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
import signal
import subprocess
import time
from pathlib import Path

__all__ = [
    "MARKER_ENV",
    "cleanup_datapath",
    "cluster_pids",
    "kill_pids",
    "mounts_under",
    "pid_alive",
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
    marker = f"{MARKER_ENV}={data_dir}".encode()
    skip = {os.getpid(), *exclude}
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in env and pid_alive(int(entry)):
            found.append(int(entry))
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
