"""Golden scenarios: ``scenarios/<name>/input.yaml`` (identities, endpoints, policies) resolved into
``expected.txt`` (every endpoint's map, the CIDR identities, the policy errors).

To regenerate after an intended change: ``UPDATE_GOLDEN=1 pytest tests/datapath/test_policy_scenarios.py``
and review the diff — an expected file is a claim about Cilium's semantics, not a snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.policy.model import Endpoint
from nodemesh.policy.render import render_policy
from nodemesh.policy.resolve import resolve

HERE = Path(__file__).parent / "scenarios"
SCENARIOS = sorted(p.name for p in HERE.iterdir() if (p / "input.yaml").exists())


def run(spec: dict[str, Any]) -> str:
    identities = {int(k): v for k, v in spec.get("identities", {}).items()}
    endpoints = [
        Endpoint(
            key=e["key"],
            identity=e["identity"],
            labels=tuple(e["labels"]) if "labels" in e else None,
            host=e.get("host", False),
            named_ports={k: tuple(v) for k, v in e.get("named_ports", {}).items()},  # type: ignore[misc]
        )
        for e in spec.get("endpoints", [])
    ]
    res = resolve(spec.get("policies", []), endpoints, identities)
    names = {int(k): v for k, v in spec.get("names", {}).items()}
    names.update({i: f"cidr:{c}" for c, i in res.cidr_identities.items()})
    out: list[str] = []
    for ep in endpoints:
        pol = res.policies[ep.key]
        ing = "enforced" if pol.ingress_enforced else "open"
        eg = "enforced" if pol.egress_enforced else "open"
        out.append(f"== endpoint {ep.key} (ingress {ing}, egress {eg})")
        out.extend(render_policy(pol, names))
    out.append("== cidr identities")
    out.extend(f"{c} {i}" for c, i in sorted(res.cidr_identities.items()))
    out.append("== errors")
    for ref, errs in sorted(res.errors.items()):
        out.extend(f"{ref}: {e}" for e in errs)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str) -> None:
    spec = yaml.safe_load((HERE / name / "input.yaml").read_text())
    got = run(spec)
    expected = HERE / name / "expected.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(got)
    assert got == expected.read_text()
