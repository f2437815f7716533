"""CLI latency: wall time of whole ``nodemesh`` processes, per verb, against a running local cluster.

    .venv/bin/python -m bench.cli [--rounds 15] [--baseline DIR] [--no-cluster]

Starts a one-node local cluster with the demo (root; ``nodemesh down`` at the end), then runs every
verb once per round, verbs in a different order each round (interleaved, so load drifts hit them
all alike), and reports median and p90 wall time and peak RSS (``ru_maxrss`` of the child). With
``--baseline DIR`` (a checkout of another commit, e.g. ``git archive <rev> | tar -x -C DIR``) each
verb also runs as ``python -m meshctl.main`` from DIR in the same rounds; the current tree runs
the same way from here, so both pay the same interpreter start-up.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NM = str(Path(sys.executable).parent / "nodemesh")
POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-cli, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: echo-a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def verbs(policy: str) -> dict[str, list[str]]:
    return {
        "version": ["version"],
        "get pods -A": ["get", "pods", "-A"],
        "status": ["status"],
        "observe --last 20": ["observe", "--last", "20"],
        "apply -f policy": ["apply", "-f", policy],
    }


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, exit code) of one whole process."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0, p.returncode


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.cli")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--baseline", default="", help="a checkout of the commit to compare with")
    ap.add_argument("--no-cluster", action="store_true", help="use the cluster in $NODEMESH_DATA_DIR")
    args = ap.parse_args()
    d = os.environ.get("NODEMESH_DATA_DIR", "") if args.no_cluster else tempfile.mkdtemp(prefix="nm-cli-")
    env = {**os.environ, "NODEMESH_DATA_DIR": d}
    tmp = Path(tempfile.mkdtemp(prefix="nm-cli-policy-"))
    (tmp / "policy.yaml").write_text(POLICY)
    variants: dict[str, tuple[list[str], Path]] = {
        "nodemesh": ([NM], ROOT),
        "-m (this tree)": ([sys.executable, "-m", "meshctl.main"], ROOT),
    }
    if args.baseline:
        variants["-m (baseline)"] = ([sys.executable, "-m", "meshctl.main"], Path(args.baseline).resolve())
    load0 = os.getloadavg()
    try:
        if not args.no_cluster:
            subprocess.run([NM, "up", "--data-dir", d, "--nodes", "1", "--manifests", "examples/demo"],
                           check=True, cwd=ROOT)  # fmt: skip
            time.sleep(10)  # let the demo client make some flows
        jobs = [(v, name, argv) for v, argv in verbs(str(tmp / "policy.yaml")).items() for name in variants]
        walls: dict[tuple[str, str], list[float]] = {k[:2]: [] for k in jobs}
        rss: dict[tuple[str, str], int] = {}
        failures: dict[tuple[str, str], str] = {}
        for _ in range(args.rounds):
            random.shuffle(jobs)
            for verb, name, argv in jobs:
                prefix, cwd = variants[name]
                wall, rc = run(prefix + argv, cwd, env)
                walls[(verb, name)].append(wall)
                if rc != 0:
                    failures[(verb, name)] = f"exit {rc}"
        for verb, name, argv in jobs:  # peak RSS, in a separate run (time(1) adds a process)
            prefix, cwd = variants[name]
            out = subprocess.run(
                ["/usr/bin/time", "-f", "%M", *prefix, *argv], cwd=cwd, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            rss[(verb, name)] = int(out.stderr.strip().splitlines()[-1])
    finally:
        if not args.no_cluster:
            subprocess.run([NM, "down", "--data-dir", d], check=False, cwd=ROOT)
    load1 = os.getloadavg()
    base = " --baseline DIR" if args.baseline else ""
    print(f"Command: `python -m bench.cli --rounds {args.rounds}{base}`")
    print(f"Load average (1 min) before / after: {load0[0]:.1f} / {load1[0]:.1f} (2 cores)\n")
    print("| verb | variant | median ms | p90 ms | peak RSS MB | note |")
    print("|---|---|---|---|---|---|")
    for verb in verbs(""):
        for name in variants:
            xs = walls[(verb, name)]
            print(
                f"| `{verb}` | {name} | {statistics.median(xs) * 1e3:.0f} | {pct(xs, 90) * 1e3:.0f} | "
                f"{rss[(verb, name)] / 1024:.0f} | {failures.get((verb, name), '')} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
