"""``nodemesh connectivity test``'s plan: every object it deploys is valid, every check names pods it
deploys, each phase has the policy it claims, and a one-node cluster runs no across-node check."""

from __future__ import annotations

import pytest

from meshctl import connectivity_plan as plan
from validation import object_problems


@pytest.mark.parametrize("n", [1, 2, 3])
def test_manifests_and_policies_are_valid_objects(n: int) -> None:
    objs = plan.manifests([f"node-{i}" for i in range(1, n + 1)])
    objs += [p for p in (plan.policy(ph) for ph in plan.PHASES) if p is not None]
    for obj in objs:
        assert object_problems(obj, strict=True) == [], obj
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert len(pods) == 3 * n
    assert {o["spec"]["nodeName"] for o in pods} == {f"node-{i}" for i in range(1, n + 1)}


@pytest.mark.parametrize("n", [1, 2])
def test_checks_name_deployed_pods_and_known_phases(n: int) -> None:
    nodes = [f"node-{i}" for i in range(1, n + 1)]
    pods = {o["metadata"]["name"]: o for o in plan.manifests(nodes) if o["kind"] == "Pod"}
    for chk in plan.checks(n):
        assert chk.phase in plan.PHASES
        assert chk.src in pods or chk.src == ""
        assert chk.dst in pods or chk.dst in ("svc", "gateway")
    across = [c for c in plan.checks(n) if "across" in c.name]
    assert across and all(c.needs_nodes == 2 for c in across)
    if n == 2:
        assert all(pods[c.src]["spec"]["nodeName"] != pods[c.dst]["spec"]["nodeName"] for c in across)


def test_each_phase_has_the_policy_it_claims() -> None:
    assert plan.policy("open") is None
    l4, l7, auth = (plan.policy(p) for p in ("l4", "l7", "auth"))
    assert l4 and l7 and auth
    assert "rules" in l7["spec"]["ingress"][0]["toPorts"][0]
    assert auth["spec"]["ingress"][0]["authentication"] == {"mode": "required"}
    denies = [c for c in plan.checks(2) if c.status == 0]
    assert denies and all(c.phase == "l4" and c.src.startswith("other-") for c in denies)
    with pytest.raises(ValueError):
        plan.policy("nope")
