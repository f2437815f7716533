"""Shared fixtures for the policy engine tests: a small cluster of identities and a renderer."""

from __future__ import annotations

from typing import Any

import yaml

from nodemesh.policy.model import Endpoint
from nodemesh.policy.render import render_policy
from nodemesh.policy.resolve import Resolved, resolve

IDENTITIES: dict[int, list[str]] = {
    1000: [
        "k8s:app=web",
        "k8s:io.kubernetes.pod.namespace=prod",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
    ],
    1001: ["k8s:app=fe", "k8s:io.kubernetes.pod.namespace=prod", "k8s:io.cilium.k8s.namespace.labels.team=a"],
    1002: ["k8s:app=fe", "k8s:io.kubernetes.pod.namespace=dev", "k8s:io.cilium.k8s.namespace.labels.team=b"],
    1003: ["k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod", "k8s:io.cilium.k8s.namespace.labels.team=a"],
}
NAMES = {1000: "web", 1001: "fe", 1002: "dev/fe", 1003: "db"}
WEB = Endpoint(key="prod/web", identity=1000)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def names_for(res: Resolved) -> dict[int, str]:
    return {**NAMES, **{i: f"cidr:{c}" for c, i in res.cidr_identities.items()}}


def lines(policies: str, ep: Endpoint = WEB, **kw: Any) -> list[str]:
    res = resolve(docs(policies), [ep], IDENTITIES, **kw)
    assert not res.errors, res.errors
    return render_policy(res.policies[ep.key], names_for(res))
