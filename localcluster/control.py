"""``nodemesh up``, ``down`` and ``status`` for a local cluster (the CLI's side of the supervisor).

``up`` starts the supervisor detached (its own session, output in ``logs/supervisor.log``) and
follows ``run/state.json`` until every process is ready; ``down`` stops the supervisor, then sweeps
any process still marked with the cluster's data directory and runs the datapath cleanup hook, so
nothing is left even when the supervisor itself had been killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from localcluster.apiclient import ApiClient, ApiError
from localcluster.cleanup import (
    all_cluster_pids,
    cleanup_datapath,
    cluster_pids,
    kill_pids,
    pid_alive,
    unmount_under,
)
from localcluster.layout import ClusterInfo, SupervisorState, load_api_token, load_credentials

__all__ = ["add_stream_inventory", "cluster_status", "down", "supervisor_pid", "up"]

Out = Callable[[str], None]


def _read_state(d: Path) -> SupervisorState | None:
    try:
        return msgspec.json.decode((d / "run" / "state.json").read_bytes(), type=SupervisorState)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def _read_cluster(d: Path) -> ClusterInfo | None:
    try:
        return msgspec.json.decode((d / "run" / "cluster.json").read_bytes(), type=ClusterInfo)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def supervisor_pid(d: Path) -> int:
    """The running supervisor's pid, or 0."""
    try:
        pid = int((d / "run" / "supervisor.pid").read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if pid_alive(pid) else 0


def up(
    d: Path,
    nodes: int,
    manifests: str,
    foreground: bool,
    timeout: float,
    out: Out = print,
    *,
    node_grace: float = 40.0,
    eviction: int = 300,
    monitoring: bool = False,
) -> int:
    pid = supervisor_pid(d)
    if pid:
        out(f"nodemesh is already up in {d} (supervisor pid {pid}); see `nodemesh status`")
        return 0
    others = {k: v for k, v in all_cluster_pids().items() if k != str(d)}
    if others:
        where = ", ".join(f"{k} ({len(v)} process(es))" for k, v in sorted(others.items()))
        downs = "; ".join(f"`nodemesh --data-dir {k} down`" for k in sorted(others))
        out(
            f"error: another nodemesh local cluster runs from {where}. Local clusters share"
            " machine-wide resources (node addresses 127.0.50.<i> with authd on port 4250, pod CIDRs"
            " 10.244.<i>.0/24, the LB pool 127.0.100.0/24, DNS on 169.254.20.10:53, socket"
            f" load-balancing programs on the cgroup root), so one runs at a time: stop it first with {downs}"
            " (docs/local-mode.md)."
        )
        return 1
    if manifests and not Path(manifests).is_dir():
        out(f"error: --manifests {manifests}: not a directory")
        return 2
    strays = cluster_pids(d)
    if strays:
        # A supervisor that was killed leaves its children running (they would hold the old
        # JetStream store and pod namespaces): clear them before starting over.
        out(f"stopping {len(strays)} process(es) left by a previous run in {d}")
        kill_pids(strays)
        cleanup_datapath(d)
    args = ["--data-dir", str(d), "--nodes", str(nodes)]
    args += ["--node-grace", f"{node_grace:g}", "--pod-eviction-timeout", str(eviction)]
    if monitoring:
        args.append("--monitoring")
    if manifests:
        args += ["--manifests", str(Path(manifests).absolute())]
    if foreground:
        from localcluster.supervisor import main as supervisor_main

        return supervisor_main(args)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    log_path = d / "logs" / "supervisor.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "localcluster.supervisor", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=d,
        )
    out(f"starting nodemesh in {d} (supervisor pid {child.pid}, log {log_path})")
    return _follow(d, child, timeout, log_path, out)


def _follow(d: Path, child: subprocess.Popen[bytes], timeout: float, log_path: Path, out: Out) -> int:
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    state: SupervisorState | None = None
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            out(f"error: the supervisor exited ({child.returncode}); last lines of {log_path}:")
            for line in tail:
                out("  " + line)
            return 1
        state = _read_state(d)
        if state is not None and state.pid == child.pid:
            for p in state.procs:
                word = "ready" if p.ready else "running" if p.running else ""
                if word and shown.get(p.name) != word:
                    shown[p.name] = word
                    out(f"  {word:8} {p.name}")
            if state.phase == "running" and not state.pending:
                ready = sum(1 for p in state.procs if p.ready)
                out(f"nodemesh is up: {ready} processes ready. Try `nodemesh status`, `nodemesh get nodes`.")
                return 0
        time.sleep(0.25)
    out(f"error: not ready after {timeout:.0f}s (the cluster keeps starting; `nodemesh down` stops it):")
    for p in state.pending if state else []:
        why = "running, not ready" if p.running else f"not running (last exit {p.last_exit})"
        out(f"  {p.name}: {why}; restarts {p.restarts}; read {p.log}")
    return 1


def down(d: Path, grace: float = 30.0, out: Out = print) -> int:
    pid = supervisor_pid(d)
    if pid:
        out(f"stopping nodemesh in {d} (supervisor pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            out(f"supervisor did not stop in {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    strays = cluster_pids(d)
    if strays:
        out(f"stopping {len(strays)} leftover process(es): {' '.join(map(str, strays))}")
        kill_pids(strays)
    cleanup_datapath(d)
    unmount_under(d)
    from localcluster.dnsaddr import cleanup_dns_address  # netlink: only `down` needs it

    cleanup_dns_address(d)
    for f in ("state.json", "cluster.json", "supervisor.pid"):
        with contextlib.suppress(FileNotFoundError):
            (d / "run" / f).unlink()
    if not pid and not strays:
        out(f"no nodemesh cluster running in {d}")
    else:
        out("nodemesh is down")
    return 0


async def _nats_status(d: Path, url: str) -> dict[str, Any]:
    import nats

    user, password = load_credentials(str(d), "admin")
    info: dict[str, Any] = {"url": url, "reachable": False, "streams": [], "buckets": []}
    try:
        nc = await nats.connect(
            url,
            user=user or None,
            password=password or None,
            connect_timeout=2,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    except Exception as e:
        info["error"] = str(e) or type(e).__name__
        return info
    try:
        info["reachable"] = True
        js = nc.jetstream()
        add_stream_inventory(info, await asyncio.wait_for(js.streams_info(), 5))
    except Exception as e:
        info["jetstream_error"] = str(e) or type(e).__name__
    finally:
        await nc.close()
    return info


def _nodes(api_url: str, d: Path) -> list[dict[str, Any]] | str:
    from nodemesh.kinds import by_kind

    try:
        items = ApiClient(api_url, timeout=5, token=load_api_token(str(d))).list(by_kind("Node"))
    except ApiError as e:
        return str(e)
    out = []
    for n in items:
        conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions") or []}
        addrs = [a.get("address") for a in (n.get("status") or {}).get("addresses") or []]
        out.append(
            {
                "name": n["metadata"]["name"],
                "ready": conds.get("Ready") == "True",
                "podCIDR": (n.get("spec") or {}).get("podCIDR", ""),
                "addresses": addrs,
            }
        )
    return out


def cluster_status(d: Path) -> dict[str, Any]:
    """Everything ``nodemesh status`` shows, as plain data."""
    pid = supervisor_pid(d)
    cluster = _read_cluster(d)
    state = _read_state(d)
    result: dict[str, Any] = {"data_dir": str(d), "up": bool(pid and cluster), "supervisor_pid": pid}
    if not pid or cluster is None:
        return result
    procs = []
    for p in state.procs if state else []:
        entry = msgspec.to_builtins(p)
        entry.pop("argv", None)
        # state.json is written every 0.5 s; a pid that died since is not running.
        if entry["running"] and not pid_alive(p.pid):
            entry["running"] = entry["ready"] = False
        procs.append(entry)
    result["phase"] = state.phase if state else "starting"
    result["processes"] = procs
    result["cluster"] = msgspec.to_builtins(cluster)
    result["nats"] = asyncio.run(_nats_status(d, cluster.nats_url))
    result["nodes"] = _nodes(cluster.api_url, d)
    return result


def add_stream_inventory(out: dict[str, Any], streams: list[Any]) -> None:
    """Append each JetStream stream to ``out["streams"]``, KV buckets (``KV_<name>``) to ``out["buckets"]``.

    One place for the shape `status` prints, whether it reads the local cluster or a remote one.
    """
    for s in streams:
        name = s.config.name or ""
        entry = {"name": name, "messages": s.state.messages, "bytes": s.state.bytes}
        if name.startswith("KV_"):
            out["buckets"].append({**entry, "name": name[3:]})
        else:
            out["streams"].append(entry)
