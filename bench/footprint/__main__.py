"""Node footprint: RSS and PSS of every local-cluster process, idle, under traffic, and loaded.

    .venv/bin/python -m bench.footprint [--nodes 2] [--pods 100] [--identities 10000]
                                        [--traffic-seconds 20] [--settle 15]

Runs as root (it starts a local cluster: ``nodemesh up --nodes N --manifests examples/demo``;
``nodemesh down`` at the end, whatever happens). Phases, each sampled from
``/proc/<pid>/smaps_rollup`` (RSS, and PSS: shared pages divided among the processes mapping them):

1. **idle** — the demo, settled (its client curls every 5 s).
2. **traffic** — ``--traffic-seconds`` of back-to-back requests through the Gateway (``/a`` and
   ``/b``), sampled every second; the per-process maximum is reported.
3. **loaded** — ``--pods`` pods (host ``sleep`` in a pod netns) placed on ``node-1``, deleted and
   created again (churn), and ``--identities`` identities with one remote-node ipcache entry each
   written to the KV (as identities allocated for pods on other nodes), then settled.
4. **loaded + traffic** — phase 2 again on the loaded cluster.

The node's components are ``datapath``, ``authd`` and ``envoy`` of ``node-1``; the report gives their
sum per phase, each control-plane service, and the whole cluster's total (supervisor, NATS, the API
server and every service; pods listed separately).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import msgspec

from localcluster.apiclient import ApiClient
from localcluster.layout import ClusterInfo, SupervisorState, load_api_token, load_credentials
from nodemesh.kinds import by_kind

NM = str(Path(sys.executable).parent / "nodemesh")
NODE = "node-1"
NODE_SERVICES = ("datapath", "authd", "envoy")
Sample = dict[str, tuple[int, int]]  # process name → (RSS kB, PSS kB)


def smaps_rollup(pid: int) -> tuple[int, int]:
    """(RSS kB, PSS kB) of one process; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _state(d: Path) -> SupervisorState:
    return msgspec.json.decode((d / "run" / "state.json").read_bytes(), type=SupervisorState)


def _cluster(d: Path) -> ClusterInfo:
    return msgspec.json.decode((d / "run" / "cluster.json").read_bytes(), type=ClusterInfo)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def sample(d: Path) -> Sample:
    """Every cluster process by name; pods (children of the datapath) as ``pods@<node>`` summed."""
    st = _state(d)
    out: Sample = {"supervisor": smaps_rollup(st.pid)}
    for p in st.procs:
        if not p.pid:
            continue
        out[p.name] = smaps_rollup(p.pid)
        if p.service == "datapath":
            rss = pss = 0
            stack = _children(p.pid)
            while stack:
                c = stack.pop()
                r, s = smaps_rollup(c)
                rss, pss = rss + r, pss + s
                stack += _children(c)
            out[f"pods@{p.node}"] = (rss, pss)
    return out


def maxed(samples: list[Sample]) -> Sample:
    out: Sample = {}
    for s in samples:
        for k, (r, p) in s.items():
            r0, p0 = out.get(k, (0, 0))
            out[k] = (max(r0, r), max(p0, p))
    return out


def traffic(d: Path, seconds: float) -> tuple[Sample, int]:
    """Requests through the Gateway for ``seconds`` (two client threads); the per-process maximum."""
    gw = _gateway_address(d)
    stop = time.monotonic() + seconds
    count = [0]

    def client(path: str) -> None:
        while time.monotonic() < stop:
            try:
                with urllib.request.urlopen(f"http://{gw}:8080{path}", timeout=5) as r:
                    r.read()
                count[0] += 1
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(p,)) for p in ("/a", "/b")]
    for t in threads:
        t.start()
    samples = []
    while time.monotonic() < stop:
        samples.append(sample(d))
        time.sleep(1)
    for t in threads:
        t.join()
    return maxed(samples), count[0]


def _gateway_address(d: Path) -> str:
    api = ApiClient(_cluster(d).api_url, token=load_api_token(str(d)))
    gw = api.get(by_kind("Gateway"), "demo", "demo") or {}
    addrs = (gw.get("status") or {}).get("addresses") or []
    return str(addrs[0]["value"]) if addrs else "127.0.100.1"


def _pod(i: int) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"fp-{i}", "namespace": "bench", "labels": {"app": "fp"}},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}],
        },
    }


def _wait_running(api: ApiClient, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = api.list(by_kind("Pod"), "bench")
        if sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running") >= n:
            return
        time.sleep(2)
    raise SystemExit(f"footprint: {n} pods not Running after {timeout:.0f} s")


def _wait_gone(api: ApiClient, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and api.list(by_kind("Pod"), "bench"):
        time.sleep(2)


def pods_churn(d: Path, n: int) -> None:
    api = ApiClient(_cluster(d).api_url, token=load_api_token(str(d)))
    ns_kind = by_kind("Namespace")
    if api.get(ns_kind, "bench") is None:
        api.create(ns_kind, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
    pod = by_kind("Pod")
    for _round in range(2):  # create, delete, create again
        for i in range(n):
            api.create(pod, _pod(i), "bench")
        _wait_running(api, n)
        if _round == 0:
            for i in range(n):
                api.delete(pod, f"fp-{i}", "bench")
            _wait_gone(api)


async def _identities(d: Path, n: int) -> None:
    from nodemesh.bus import connect
    from nodemesh.codec import encode
    from nodemesh.messages.identity import Identity, IPCacheEntry
    from nodemesh.streams import BUCKET_IDENTITIES, BUCKET_IPCACHE, identity_key, ipcache_key

    user, password = load_credentials(str(d), "admin")
    bus = await connect(_cluster(d).nats_url, name="bench-footprint", user=user, password=password)
    try:
        ids = await bus.kv(BUCKET_IDENTITIES.name)
        ipc = await bus.kv(BUCKET_IPCACHE.name)
        now = time.time()

        async def put(i: int) -> None:
            num = 200_000 + i
            ip = f"10.250.{i // 250}.{i % 250 + 1}"
            labels = sorted([f"k8s:app=fp-{i}", "k8s:io.kubernetes.pod.namespace=remote"])
            ident = Identity(id=num, labels=labels, refs=[f"node-2/remote/fp-{i}"], created=now)
            entry = IPCacheEntry(ip=ip, identity=num, node="node-2", namespace="remote", pod=f"fp-{i}")
            await ids.put(identity_key(num), encode(ident))
            await ipc.put(ipcache_key(ip), encode(entry))

        for start in range(0, n, 200):  # 200 in flight
            await asyncio.gather(*(put(i) for i in range(start, min(n, start + 200))))
    finally:
        await bus.nc.close()


def _kb(v: int) -> str:
    return f"{v / 1024:.0f}"


def report(phases: list[tuple[str, Sample]], args: argparse.Namespace, notes: list[str]) -> str:
    names = sorted({k for _, s in phases for k in s})
    lines = [
        f"Command: `python -m bench.footprint --nodes {args.nodes} --pods {args.pods} "
        f"--identities {args.identities} --traffic-seconds {args.traffic_seconds}`",
        "",
        *notes,
        "",
        "Node components of `node-1` (MB, RSS / PSS):",
        "",
        "| phase | " + " | ".join(NODE_SERVICES) + " | **sum RSS** | sum PSS |",
        "|---|" + "---|" * (len(NODE_SERVICES) + 2),
    ]
    for title, s in phases:
        cells = [f"{_kb(s.get(f'{x}@{NODE}', (0, 0))[0])} / {_kb(s.get(f'{x}@{NODE}', (0, 0))[1])}"
                 for x in NODE_SERVICES]  # fmt: skip
        rss = sum(s.get(f"{x}@{NODE}", (0, 0))[0] for x in NODE_SERVICES)
        pss = sum(s.get(f"{x}@{NODE}", (0, 0))[1] for x in NODE_SERVICES)
        lines.append(f"| {title} | " + " | ".join(cells) + f" | **{_kb(rss)}** | {_kb(pss)} |")
    lines += ["", "Every process (MB, RSS / PSS):", ""]
    lines.append("| process | " + " | ".join(t for t, _ in phases) + " |")
    lines.append("|---|" + "---|" * len(phases))
    for n in names:
        cells = [f"{_kb(s[n][0])} / {_kb(s[n][1])}" if n in s else "-" for _, s in phases]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for title, s in phases:
        total = [v for k, v in s.items() if not k.startswith("pods@")]
        lines.append(
            f"| **cluster total, {title}** (pods excluded) | "
            + " | ".join(
                f"**{_kb(sum(r for r, _ in total))} / {_kb(sum(p for _, p in total))}**" if t == title else ""
                for t, _ in phases
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.footprint")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--identities", type=int, default=10000)
    ap.add_argument("--traffic-seconds", type=float, default=20)
    ap.add_argument("--settle", type=float, default=15)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="nm-footprint-"))
    notes = [f"Load average before: {os.getloadavg()[0]:.1f} (2 cores)"]
    phases: list[tuple[str, Sample]] = []
    try:
        subprocess.run([NM, "up", "--data-dir", str(d), "--nodes", str(args.nodes), "--manifests",
                        "examples/demo"], check=True)  # fmt: skip
        time.sleep(args.settle)
        phases.append(("idle", sample(d)))
        s, n = traffic(d, args.traffic_seconds)
        phases.append(("traffic", s))
        notes.append(f"Traffic, idle cluster: {n} requests in {args.traffic_seconds:.0f} s")
        t0 = time.monotonic()
        pods_churn(d, args.pods)
        notes.append(f"{args.pods} pods created, deleted, created: {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        asyncio.run(_identities(d, args.identities))
        notes.append(f"{args.identities} identities + ipcache entries written: {time.monotonic() - t0:.0f} s")
        time.sleep(args.settle)
        phases.append(("loaded", sample(d)))
        s, n = traffic(d, args.traffic_seconds)
        phases.append(("loaded+traffic", s))
        notes.append(f"Traffic, loaded cluster: {n} requests in {args.traffic_seconds:.0f} s")
        notes.append(f"Load average after: {os.getloadavg()[0]:.1f}")
    finally:
        subprocess.run([NM, "down", "--data-dir", str(d)], check=False)
    print(report(phases, args, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
