"""``nodemesh logs NAME``: a local cluster process's log (``nats``, ``xds``, ``datapath-node-1``, …), or a
pod's (``-n NAMESPACE``), like ``kubectl logs``; ``--tail N`` and ``-f`` as there.

Processes log to ``<data-dir>/logs/<process>.log`` (the supervisor's own is ``supervisor``); a pod's
output is ``<data-dir>/nodes/<node>/pods/<namespace>_<pod>.log`` on the node that runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

from localcluster.layout import data_dir
from nodemesh.errors import NodemeshError

__all__ = ["register", "resolve_log"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("logs", help="a process's or a pod's log (like kubectl logs)")
    p.add_argument("name", help="process (see `nodemesh status`) or pod (with -n)")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace: NAME is a pod")
    p.add_argument("--tail", type=int, default=-1, help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    p.set_defaults(func=_logs)


def resolve_log(root: Path, name: str, namespace: str | None) -> Path:
    """The log file of process ``name``, or of pod ``namespace/name``; a clear error if there is none."""
    if namespace is None:
        path = root / "logs" / f"{name}.log"
        if path.is_file():
            return path
        known = sorted(p.stem for p in (root / "logs").glob("*.log"))
        hint = f"; processes: {', '.join(known)}" if known else " (is a cluster up in this data dir?)"
        raise NodemeshError(f"no process {name!r}{hint}; for a pod add -n NAMESPACE")
    found = sorted((root / "nodes").glob(f"*/pods/{namespace}_{name}.log"))
    if not found:
        raise NodemeshError(f"no log for pod {namespace}/{name} on any node")
    return max(found, key=lambda p: p.stat().st_mtime)  # a pod rescheduled: its latest node


def _logs(args: argparse.Namespace) -> int:
    path = resolve_log(data_dir(args.data_dir), args.name, args.namespace)
    with open(path, "rb") as f:
        lines = deque(f, maxlen=args.tail) if args.tail >= 0 else f.readlines()
        out = sys.stdout.buffer
        out.writelines(lines)
        out.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.2)
    return 0
