"""Local controllers for workloads: bootstrap objects, Deployment → ReplicaSet → Pods, rollouts,
scheduling, garbage collection, and resilience to malformed objects."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from localcluster.apiserver.app import LocalApi
from localcluster.apiserver.controllers.hashing import compute_hash
from nodemesh.kinds import by_kind
from tests.localapi.helpers import Client, until

NS = "/api/v1/namespaces/default"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
RS = "/apis/apps/v1/namespaces/default/replicasets"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def deployment(replicas: int, image: str = "busybox") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}
                    ]
                },
            },
        },
    }


async def _items(c: Client, path: str) -> list[dict[str, Any]]:
    st, body = await c.get(path)
    assert st == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_bootstrap_nodes_namespaces_classes(client: Client) -> None:
    nodes = await _items(client, "/api/v1/nodes")
    assert [n["metadata"]["name"] for n in nodes] == ["node-1", "node-2"]
    n2 = nodes[1]
    assert n2["spec"]["podCIDR"] == "10.244.2.0/24"
    assert {"type": "InternalIP", "address": "127.0.50.2"} in n2["status"]["addresses"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in n2["status"]["conditions"])
    nss = {n["metadata"]["name"]: n for n in await _items(client, "/api/v1/namespaces")}
    assert {"default", "kube-system"} <= set(nss)
    assert nss["default"]["metadata"]["labels"]["kubernetes.io/metadata.name"] == "default"
    gcs = {
        g["metadata"]["name"]: g["spec"]["controllerName"]
        for g in await _items(client, "/apis/gateway.networking.k8s.io/v1/gatewayclasses")
    }
    assert gcs == {"nodemesh": "nodemesh.io/gateway-controller", "cilium": "io.cilium/gateway-controller"}
    ics = await _items(client, "/apis/networking.k8s.io/v1/ingressclasses")
    assert sorted(i["metadata"]["name"] for i in ics) == ["cilium", "nodemesh"]


async def test_deployment_expands_with_kubernetes_names_and_scales(client: Client) -> None:
    dep = deployment(3)
    st, _ = await client.post(DEPLOY, dep)
    assert st == 201
    h = compute_hash(dep["spec"]["template"])
    assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz2456789]+", h)

    async def pods() -> list[dict[str, Any]]:
        return await _items(client, f"{NS}/pods?labelSelector=app%3Dweb")

    async def n_pods(n: int) -> bool:
        return len(await pods()) == n

    await until(lambda: n_pods(3), what="3 pods")
    for p in await pods():
        assert re.fullmatch(rf"web-{h}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", p["metadata"]["name"])
        assert p["metadata"]["labels"]["pod-template-hash"] == h
        assert p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    # Spread by the scheduler: two nodes, three pods → 2 + 1.
    await until(lambda: _all_scheduled(client), what="scheduled")
    placed = sorted(p["spec"]["nodeName"] for p in await pods())
    assert placed in (["node-1", "node-1", "node-2"], ["node-1", "node-2", "node-2"])
    rss = await _items(client, RS)
    assert [r["metadata"]["name"] for r in rss] == [f"web-{h}"]

    st, _ = await client.patch(f"{DEPLOY}/web", {"spec": {"replicas": 1}})
    await until(lambda: n_pods(1), what="scaled to 1")
    # A template change makes a new ReplicaSet; the old one goes to 0.
    st, _ = await client.patch(
        f"{DEPLOY}/web",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "c",
                                "image": "nginx",
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    }
                }
            }
        },
    )
    h2 = compute_hash(deployment(1, "nginx")["spec"]["template"])
    assert h2 != h

    # RollingUpdate (maxSurge 25% → 1, maxUnavailable 25% → 0): the old pod stays until the new
    # one is Ready, so the service never has zero pods.
    async def surged() -> bool:
        return sorted(p["metadata"]["labels"]["pod-template-hash"] for p in await pods()) == sorted([h, h2])

    await until(surged, what="new pod next to the old one")
    new_pod = next(p for p in await pods() if p["metadata"]["labels"]["pod-template-hash"] == h2)
    await asyncio.sleep(0.3)  # give the controllers a chance to (wrongly) remove the old pod
    assert len(await pods()) == 2
    await client.patch(
        f"{NS}/pods/{new_pod['metadata']['name']}/status",
        {
            "status": {
                "podIP": "10.244.1.50",
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )

    async def rolled() -> bool:
        ps = await pods()
        return len(ps) == 1 and ps[0]["metadata"]["labels"]["pod-template-hash"] == h2

    await until(rolled, what="rolled to the new template once it is ready")
    rss = {r["metadata"]["name"]: r["spec"]["replicas"] for r in await _items(client, RS)}
    assert rss == {f"web-{h}": 0, f"web-{h2}": 1}
    # Deleting the Deployment garbage-collects its ReplicaSets and Pods.
    await client.delete(f"{DEPLOY}/web")

    async def gone() -> bool:
        return not await pods() and not await _items(client, RS)

    await until(gone, what="cascade delete")


async def _all_scheduled(client: Client) -> bool:
    ps = await _items(client, f"{NS}/pods")
    return bool(ps) and all(p["spec"].get("nodeName") for p in ps)


async def test_a_malformed_object_does_not_stall_its_controller(client: Client, api: LocalApi) -> None:
    # Stored without validation (as if written by an older version): its controller skips it.
    bad = {"metadata": {"name": "bad", "namespace": "default"}, "spec": {"template": "oops", "replicas": 2}}
    api.store.create(by_kind("Deployment"), bad, validate=False)
    api.store.create(
        by_kind("Service"),
        {"metadata": {"name": "badsvc", "namespace": "default"}, "spec": {"selector": ["not", "a", "map"]}},
        validate=False,
    )
    st, _ = await client.post(DEPLOY, deployment(2))
    assert st == 201

    async def good_expanded() -> bool:
        return len(await _items(client, f"{NS}/pods?labelSelector=app%3Dweb")) == 2

    await until(good_expanded, what="the good Deployment expands despite the bad one")
    st, err = await client.post(
        f"{NS}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"a": 1}}},
    )
    assert st == 422 and "metadata.labels" in err["message"]
