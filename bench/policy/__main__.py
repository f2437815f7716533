"""Policy engine timings: incremental engine (A) against whole-endpoint recompute (B, the reference).

One endpoint selected by a policy allowing ``--ids`` client identities on ``--ports`` TCP ports
(ids x ports entries). Interleaved A/B repetitions of: the initial policy, editing one port of the
rule (ids upserts + ids deletes), and a new client identity (ports upserts). Prints medians, p99 and
B/A ratios.

    .venv/bin/python -m bench.policy [--ids 1000] [--ports 10] [--reps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from nodemesh.policy.incremental import PolicyEngine
from nodemesh.policy.model import Endpoint


def policy(ports: int, last_port: int) -> dict[str, Any]:
    pp = [{"port": str(8000 + i), "protocol": "TCP"} for i in range(ports - 1)]
    pp.append({"port": str(last_port), "protocol": "TCP"})
    return {
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "prod"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"tier": "client"}}], "toPorts": [{"ports": pp}]}],
        },
    }


def setup(ids: int, from_scratch: bool) -> PolicyEngine:
    eng = PolicyEngine(from_scratch=from_scratch)
    eng.upsert_identity(100000, ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod"])
    for i in range(ids):
        eng.upsert_identity(
            200000 + i, [f"k8s:app=c{i}", "k8s:tier=client", "k8s:io.kubernetes.pod.namespace=prod"]
        )
    eng.upsert_endpoint(Endpoint(key="web", identity=100000))
    return eng


def ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=1000)
    ap.add_argument("--ports", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    res: dict[str, dict[str, list[float]]] = {
        m: {"A": [], "B": []} for m in ("initial", "rule edit", "new id")
    }
    engines = {"A": setup(a.ids, False), "B": setup(a.ids, True)}
    for rep in range(a.reps):
        for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):  # interleaved, alternating order
            fresh = setup(a.ids, side == "B")
            t = time.perf_counter()
            fresh.upsert_policy(policy(a.ports, 9000))
            res["initial"][side].append(ms_since(t))
            eng = engines[side]
            if rep == 0:
                eng.upsert_policy(policy(a.ports, 9000))
            edited = policy(a.ports, 9001 + rep)
            t = time.perf_counter()
            eng.upsert_policy(edited)
            res["rule edit"][side].append(ms_since(t))
            labels = [f"k8s:app=n{rep}", "k8s:tier=client", "k8s:io.kubernetes.pod.namespace=prod"]
            t = time.perf_counter()
            eng.upsert_identity(300000 + rep, labels)
            res["new id"][side].append(ms_since(t))
    entries = len(engines["A"].policy("web").entries)  # type: ignore[union-attr]
    print(f"endpoint map: {entries} entries ({a.ids} ids x {a.ports} ports), {a.reps} interleaved reps")
    print(f"{'operation':<10} {'A median':>9} {'A p99':>8} {'B median':>9} {'B p99':>8} {'B/A':>6}  (ms)")
    for op, r in res.items():
        am, bm = statistics.median(r["A"]), statistics.median(r["B"])
        ap99 = sorted(r["A"])[int(0.99 * (len(r["A"]) - 1))]
        bp99 = sorted(r["B"])[int(0.99 * (len(r["B"]) - 1))]
        print(f"{op:<10} {am:>9.2f} {ap99:>8.2f} {bm:>9.2f} {bp99:>8.2f} {bm / am:>6.1f}")


if __name__ == "__main__":
    main()
