"""xds benchmark: ``.venv/bin/python -m bench.xds [--changes 40] [--hey-seconds 5] [--rounds 3]``.

Part A — change-to-ACK latency with 1,000 routes / 1,000 clusters / 10,000 endpoints loaded: one SotW
Envoy and one Delta Envoy on the same ADS server, changes applied to one at a time, interleaved (the
order alternates). Two changes: (1) an HTTPRoute switches its backend to a new Service (RDS + a new
CDS cluster + its EDS assignment; switched back the next time), (2) one Service's endpoints change
(one EDS assignment). Latency = ``cache.set_snapshot`` → the last ACK that makes every changed
resource applied in that Envoy (per :class:`AckTracker`); bytes = resource bytes pushed.

Part B — one per-node Envoy serving 20 services vs 20 sidecar-style Envoys with the same 20 routes:
RSS, and latency added at ≈1,000 rps (hey, 16 connections) over a direct call to the backend: through
the node Envoy vs through a client+server sidecar pair. The backend is a static Envoy answering 1 KB
directly, so no Python sits on the data path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from typing import Any

from conformance.envoy import Envoy
from services.xds.acks import AckEvent, AckTracker, Sent
from services.xds.bootstrap import render_bootstrap
from services.xds.cache import SnapshotCache
from services.xds.server import AdsServer, Hooks
from services.xds.snapshot import CLUSTER, ENDPOINT, ROUTE, Snapshot
from testkit.natsserver import free_port

from . import scenario as sc
from .e2e import part_c


class Harness:
    def __init__(self) -> None:
        self.cache = SnapshotCache()
        self.tracker = AckTracker()
        self.bytes: dict[str, int] = {}
        self.progress = asyncio.Event()
        self.server = AdsServer(self.cache, Hooks(on_sent=self._sent, on_ack=self._ack))

    def _sent(self, s: Sent) -> None:
        snap = self.cache.get(s.node)
        if snap is not None:
            res = snap.resources(s.type_url)
            self.bytes[s.node] = self.bytes.get(s.node, 0) + sum(
                len(res[n].payload) for n in s.resources if n in res
            )

    def _ack(self, ev: AckEvent) -> None:
        self.tracker.record(ev)
        self.progress.set()

    def applied(self, node: str, want: dict[tuple[str, str], str | None]) -> bool:
        return all(self.tracker.state(node, t, n).applied == v for (t, n), v in want.items())

    async def change(
        self, node: str, new: Snapshot, want: dict[tuple[str, str], str | None]
    ) -> tuple[float, int]:
        self.bytes[node] = 0
        t0 = time.perf_counter()
        self.cache.set_snapshot(node, new)
        while not self.applied(node, want):
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), 60)
        return time.perf_counter() - t0, self.bytes[node]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def part_a(changes: int) -> dict[str, Any]:
    h = Harness()
    port = await h.server.start("127.0.0.1:0")
    ports = [free_port() for _ in range(sc.GROUPS)]
    t = time.perf_counter()
    base, backends = sc.big_snapshot(ports)
    build_s = time.perf_counter() - t
    modes = {"sotw": False, "delta": True}
    snaps = {m: base for m in modes}
    envoys: dict[str, Envoy] = {}
    load_s: dict[str, float] = {}
    try:
        for m, delta in modes.items():  # one at a time, so initial loads do not compete
            h.cache.set_snapshot(m, base)
            t = time.perf_counter()
            envoys[m] = Envoy(
                render_bootstrap(m, "127.0.0.1", port, 0, delta=delta), concurrency=2, name=m
            ).start()
            await envoys[m].wait_live(120)
            load_s[m] = time.perf_counter() - t
        lat: dict[tuple[str, str], list[float]] = {}
        size: dict[tuple[str, str], list[int]] = {}
        rng = random.Random(7)
        for k in range(changes):
            i = rng.randrange(len(backends))
            order = list(modes) if k % 2 == 0 else list(reversed(modes))
            for m in order:
                for kind in ("route", "endpoint"):
                    new, want = _mutate(snaps[m], kind, i, k)
                    dt, nbytes = await h.change(m, new, want)
                    snaps[m] = new
                    lat.setdefault((m, kind), []).append(dt)
                    size.setdefault((m, kind), []).append(nbytes)
        out: dict[str, Any] = {"build_snapshot_s": build_s, "initial_load_s": load_s, "results": {}}
        for (m, kind), xs in lat.items():
            out["results"][f"{kind}/{m}"] = {
                "p50_ms": _pct(xs, 50) * 1e3,
                "p99_ms": _pct(xs, 99) * 1e3,
                "mean_ms": statistics.mean(xs) * 1e3,
                "bytes_median": statistics.median(size[(m, kind)]),
                "n": len(xs),
            }
        out["rss_mb"] = {m: e.rss_bytes() / 2**20 for m, e in envoys.items()}
        return out
    finally:
        for e in envoys.values():
            e.stop()
        await h.server.stop(0)


def _mutate(snap: Snapshot, kind: str, i: int, k: int) -> tuple[Snapshot, dict[tuple[str, str], str | None]]:
    if kind == "endpoint":
        name = f"svc-{i}"
        new = snap.replace(ENDPOINT, upsert=[sc.assignment(name, sc.fake_endpoints(i, salt=1 + k % 7))])
        return new, {(ENDPOINT, name): new.resources(ENDPOINT)[name].version}
    group = i // sc.ROUTES_PER_GROUP
    canary = f"canary-{i}"
    backends = {j: f"svc-{j}" for j in range(sc.GROUPS * sc.ROUTES_PER_GROUP)}
    if canary in snap.resources(CLUSTER):  # switch back and drop the canary Service
        new = snap.replace(ROUTE, upsert=[sc.route_config(group, backends)])
        new = new.replace(CLUSTER, remove=[canary]).replace(ENDPOINT, remove=[canary])
        want: dict[tuple[str, str], str | None] = {(CLUSTER, canary): None}
    else:
        backends[i] = canary
        new = snap.replace(CLUSTER, upsert=[sc.cluster(canary)])
        new = new.replace(ENDPOINT, upsert=[sc.assignment(canary, sc.fake_endpoints(i, salt=100))])
        new = new.replace(ROUTE, upsert=[sc.route_config(group, backends)])
        want = {(CLUSTER, canary): new.resources(CLUSTER)[canary].version}
        want[(ENDPOINT, canary)] = new.resources(ENDPOINT)[canary].version
    route = f"routes-{group}"
    want[(ROUTE, route)] = new.resources(ROUTE)[route].version
    return new, want


_HEY_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)% in (\d+\.\d+) secs", re.M)


async def hey(url: str, seconds: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        "16",
        "-q",
        "63",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    pcts = {float(p): float(s) * 1e3 for p, s in _HEY_LINE.findall(text)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)
    bad = sum(int(n) for c, n in codes if c != "200")
    return {
        "p50": pcts.get(50.0, -1),
        "p99": pcts.get(99.0, -1),
        "rps": float(rps.group(1)) if rps else 0,
        "non200": bad,
    }


_T = "type.googleapis.com/"


def _backend_bootstrap(port: int) -> dict[str, Any]:
    hcm = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "backend",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "b",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "x" * 1024}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "backend",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ]
        },
    }


async def part_b(n: int, seconds: int, rounds: int) -> dict[str, Any]:
    h = Harness()
    xport = await h.server.start("127.0.0.1:0")
    bport, nport = free_port(), free_port()
    outbound = [free_port() for _ in range(n)]
    inbound = [free_port() for _ in range(n)]
    envoys: list[Envoy] = []
    try:
        backend = Envoy(_backend_bootstrap(bport), concurrency=2, name="backend").start()
        envoys.append(backend)
        h.cache.set_snapshot("node", sc.per_node_snapshot(nport, bport, n))
        node = Envoy(render_bootstrap("node", "127.0.0.1", xport, 0), concurrency=2, name="node").start()
        envoys.append(node)
        sidecars = []
        for i in range(n):
            h.cache.set_snapshot(f"sidecar-{i}", sc.sidecar_snapshot(i, outbound[i], inbound, bport))
            sidecars.append(
                Envoy(
                    render_bootstrap(f"sidecar-{i}", "127.0.0.1", xport, 0),
                    concurrency=2,
                    name=f"sidecar-{i}",
                ).start()
            )
        envoys += sidecars
        for e in envoys:
            await (e.wait_admin(120) if e is backend else e.wait_live(120))
        await asyncio.sleep(3)  # let RSS settle after the initial config
        rss_node = node.rss_bytes() / 2**20
        rss_sidecars = sum(e.rss_bytes() for e in sidecars) / 2**20
        urls = {
            "direct": f"http://127.0.0.1:{bport}/svc-1",
            "per-node": f"http://127.0.0.1:{nport}/svc-1",
            "sidecar-pair": f"http://127.0.0.1:{outbound[0]}/svc-1",
        }
        res: dict[str, list[dict[str, float]]] = {k: [] for k in urls}
        for r in range(rounds):  # interleaved, rotating the order
            order = list(urls)[r % 3 :] + list(urls)[: r % 3]
            for k in order:
                res[k].append(await hey(urls[k], seconds))
        summary = {
            k: {m: statistics.median(x[m] for x in v) for m in ("p50", "p99", "rps", "non200")}
            for k, v in res.items()
        }
        return {"rss_mb": {"per-node": rss_node, "sidecars": rss_sidecars, "n": n}, "latency_ms": summary}
    finally:
        for e in envoys:
            e.stop()
        await h.server.stop(0)


def report(a: dict[str, Any] | None, b: dict[str, Any] | None, c: dict[str, Any] | None = None) -> None:
    if a is not None:
        r = a["results"]
        print("\n## Part A — change → Envoy ACK (1,000 routes, 1,000 clusters, 10,000 endpoints)\n")
        print(
            f"snapshot build (full, 2,020 resources): {a['build_snapshot_s'] * 1e3:.0f} ms; "
            "initial load to LIVE: " + ", ".join(f"{m} {s:.2f} s" for m, s in a["initial_load_s"].items())
        )
        print("\n| change | mode | p50 ms | p99 ms | mean ms | bytes pushed (median) | n |")
        print("|---|---|---|---|---|---|---|")
        for key in sorted(r):
            x = r[key]
            kind, m = key.split("/")
            print(
                f"| {kind} | {m} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['mean_ms']:.1f} | "
                f"{x['bytes_median']:,.0f} | {x['n']} |"
            )
        for kind in ("route", "endpoint"):
            s, d = r[f"{kind}/sotw"], r[f"{kind}/delta"]
            print(
                f"\n{kind}: SotW/Delta p50 x{s['p50_ms'] / d['p50_ms']:.1f}, "
                f"p99 x{s['p99_ms'] / d['p99_ms']:.1f}, "
                f"bytes x{s['bytes_median'] / max(1, d['bytes_median']):.0f}"
            )
    if b is not None:
        rss, lat = b["rss_mb"], b["latency_ms"]
        print(f"\n## Part B — one per-node Envoy vs {rss['n']} sidecar Envoys ({rss['n']} routes each)\n")
        print(
            f"RSS: per-node {rss['per-node']:.1f} MB, {rss['n']} sidecars {rss['sidecars']:.1f} MB "
            f"(per-node = 1/{rss['sidecars'] / rss['per-node']:.1f})"
        )
        print("\n| path | p50 ms | p99 ms | added p50 | added p99 | rps | non-200 |")
        print("|---|---|---|---|---|---|---|")
        d = lat["direct"]
        for k, x in lat.items():
            print(
                f"| {k} | {x['p50']:.3f} | {x['p99']:.3f} | "
                f"{x['p50'] - d['p50']:+.3f} | {x['p99'] - d['p99']:+.3f} | "
                f"{x['rps']:.0f} | {x['non200']:.0f} |"
            )
        pn, sp = lat["per-node"], lat["sidecar-pair"]
        add = [(pn[m] - d[m]) / max(1e-9, sp[m] - d[m]) for m in ("p50", "p99")]
        print(f"\nadded latency per-node / sidecar pair: p50 {add[0]:.2f}, p99 {add[1]:.2f}")
    if c is not None:
        print(
            "\n## Part C — HTTPRoute change → Envoy ACK through the whole service (Delta, real translator)\n"
        )
        print(
            "1,000 HTTPRoutes / 1,000 Services / 10,000 endpoints; "
            f"initial load to LIVE {c['initial_to_live_s']:.2f} s"
        )
        print(
            f"p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms (n={c['n']}); of which translate + snapshot "
            f"build (median) {c['translate_ms_median']:.0f} ms"
        )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    a = await part_a(args.changes) if args.part in ("a", "all") else None
    b = await part_b(args.services, args.hey_seconds, args.rounds) if args.part in ("b", "all") else None
    c = await part_c(changes=args.e2e_changes) if args.part in ("c", "all") else None
    report(a, b, c)
    return {"a": a, "b": b, "c": c}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.xds")
    p.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    p.add_argument(
        "--e2e-changes", type=int, default=20, help="HTTPRoute changes through the service (part C)"
    )
    p.add_argument("--changes", type=int, default=40, help="changes per mode and kind (part A)")
    p.add_argument("--services", type=int, default=20, help="pods/services (part B)")
    p.add_argument("--hey-seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="", help="also write raw results here")
    args = p.parse_args()
    results = asyncio.run(amain(args))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    sys.exit(0)


if __name__ == "__main__":
    main()
