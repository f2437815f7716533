"""``python -m conformance [--case NAME ...] [--report docs/conformance.md] [--dir PATH]``.

Runs the corpus cases one at a time (each in isolation: applied, checked, deleted) and prints one
line per case; ``--report`` writes the per-feature Markdown report. ``--mode standalone`` (the
default) uses translate + a real Envoy + echo processes; ``--mode cluster`` is for a cluster started
with ``nodemesh up`` (``--data-dir`` or ``$NODEMESH_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .cases import Generated, corpus_dir, load_case, load_index
from .report import write_report
from .runner import CaseResult, run_case
from .upstream_report import conformance_report, write_conformance_report

CLASS, CONTROLLER = "nodemesh", "nodemesh.io/gateway-controller"
# nodemesh's own cases (same format, a few extensions: conformance/corpus/README.md), run after the
# upstream corpus; they are reported apart and never enter the upstream ConformanceReport.
EXTENSION_DIR = Path(__file__).resolve().parent / "corpus"


async def _main(args: argparse.Namespace) -> int:
    root = corpus_dir(args.dir)
    try:
        index = load_index(root)
    except (OSError, yaml.YAMLError, AttributeError) as e:
        print(f"conformance: cannot read the corpus index in {root}: {e}", file=sys.stderr)
        return 2
    names = [c["name"] for c in index]
    ext_root = None if args.no_extension else Path(args.extension_dir or EXTENSION_DIR)
    ext_index = load_index(ext_root) if ext_root is not None else []
    ext_names = [c["name"] for c in ext_index]
    if args.case:
        unknown = [n for n in args.case if n not in names and n not in ext_names]
        if unknown:
            print(f"unknown case(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.case]
        ext_names = [n for n in ext_names if n in args.case]
    cluster: Any
    if args.mode == "cluster":
        from nodemesh.errors import NodemeshError

        from .cluster import LocalCluster

        try:
            cluster = LocalCluster(args.data_dir)
        except (NodemeshError, OSError) as e:
            print(f"conformance: {e}", file=sys.stderr)
            return 2
        mode = f"cluster (nodemesh up, {cluster.info.data_dir})"
    else:
        from .standalone import Standalone

        cluster = Standalone(CLASS, CONTROLLER)
        mode = "standalone (translate + Envoy 1.40 + echo processes)"
    gen = Generated()
    results: list[CaseResult] = []
    ext_results: list[CaseResult] = []
    t0 = time.monotonic()
    async with cluster:
        for where, out in ((root, results), (ext_root, ext_results)):
            for name in names if where is root else ext_names:
                assert where is not None
                out.append(await _run_one(cluster, where, name, gen, args.scale))
    passed = sum(r.passed for r in results) + sum(r.passed for r in ext_results)
    total = len(results) + len(ext_results)
    unchecked = sum(r.outcome == "not checked" for r in results + ext_results)
    print(
        f"{passed}/{total} passed"
        + (f", {unchecked} not checked" if unchecked else "")
        + f" in {time.monotonic() - t0:.0f}s"
    )
    if args.report:
        write_report(args.report, results, index, mode, ext_results)
    if args.conformance_report:
        impl: dict[str, Any] = {}
        if args.implementation_url:
            impl["url"] = args.implementation_url
        if args.contact:
            impl["contact"] = args.contact
        write_conformance_report(
            args.conformance_report,
            conformance_report(
                results,
                index,
                gateway_api_version=args.gateway_api_version or _corpus_version(root),
                channel=args.gateway_api_channel,
                implementation=impl,
            ),
        )
    return 0 if passed == total else 1


async def _run_one(cluster: Any, root: Path, name: str, gen: Generated, scale: float) -> CaseResult:
    try:
        case = load_case(root, name, CLASS, CONTROLLER)
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        r = CaseResult(name, "", False, f"cannot read the case: {e}")
    else:
        r = await run_case(cluster, case, gen, CONTROLLER, scale)
    mark = {"passed": "PASS", "failed": "FAIL", "not checked": "NOT CHECKED"}[r.outcome]
    why = r.reason or "; ".join(r.unchecked)
    print(f"{mark} {r.name} ({r.feature}, {r.seconds}s){': ' + why if why else ''}", flush=True)
    return r


def _corpus_version(root: Any) -> str:
    """The Gateway API version the corpus was taken from: its index names the upstream commit."""
    try:
        data = yaml.safe_load((root / "index.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "unknown"
    up = data.get("upstream") or {}
    return str(
        up.get("version") or (f"commit-{str(up.get('commit'))[:7]}" if up.get("commit") else "unknown")
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    p.add_argument("--case", action="append", help="run only this case (repeatable)")
    p.add_argument("--report", help="write the Markdown report here")
    p.add_argument("--dir", help="corpus directory (default $NODEMESH_CONFORMANCE_DIR or ../shared/...)")
    p.add_argument("--extension-dir", help="nodemesh's own cases (default conformance/corpus)")
    p.add_argument("--no-extension", action="store_true", help="run the upstream corpus only")
    p.add_argument("--mode", choices=("standalone", "cluster"), default="standalone")
    p.add_argument("--data-dir", help="local cluster data directory (--mode cluster)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every timeout")
    p.add_argument("--conformance-report", help="write the upstream ConformanceReport (YAML) here")
    p.add_argument(
        "--gateway-api-version",
        help="the Gateway API release the corpus follows (default: the corpus index's upstream commit)",
    )
    p.add_argument("--gateway-api-channel", choices=("standard", "experimental"), default="experimental")
    p.add_argument("--implementation-url", help="the project's URL, for the report")
    p.add_argument("--contact", action="append", help="maintainer contact for the report (repeatable)")
    sys.exit(asyncio.run(_main(p.parse_args())))


if __name__ == "__main__":
    main()
