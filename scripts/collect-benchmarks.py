#!/usr/bin/env python3
"""Rebuild docs/benchmarks.md: the summary below plus every bench/<area>/RESULTS.md, verbatim.

Run after a benchmark run updated a RESULTS.md: `python3 scripts/collect-benchmarks.py`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD = (ROOT / "docs" / "benchmarks.head.md").read_text()
ORDER = ["datapath", "policy", "l7policy", "identity", "auth", "xds", "accesslog", "dns"]

parts = [HEAD.rstrip() + "\n"]
for area in ORDER + sorted(
    p.parent.name for p in (ROOT / "bench").glob("*/RESULTS.md") if p.parent.name not in ORDER
):
    f = ROOT / "bench" / area / "RESULTS.md"
    if not f.exists():
        continue
    body = f.read_text().strip().splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]
    # Demote the area's headings one level under its section.
    body = ["#" + line if line.startswith("#") else line for line in body]
    parts.append(f"\n## bench/{area}\n\nSource: `bench/{area}/RESULTS.md`.\n" + "\n".join(body) + "\n")
(ROOT / "docs" / "benchmarks.md").write_text("".join(parts))
print("wrote docs/benchmarks.md")
