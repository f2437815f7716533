"""Local controllers for networking: EndpointSlices, LB-IPAM, Gateway Services; namespace cleanup and
the manifest directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from localcluster.apiserver.app import LocalApi
from nodemesh.kinds import by_kind
from tests.localapi.helpers import Client, pod, until

NS = "/api/v1/namespaces/default"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
RS = "/apis/apps/v1/namespaces/default/replicasets"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


async def _items(c: Client, path: str) -> list[dict[str, Any]]:
    st, body = await c.get(path)
    assert st == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


async def _all_scheduled(client: Client) -> bool:
    ps = await _items(client, f"{NS}/pods")
    return bool(ps) and all(p["spec"].get("nodeName") for p in ps)


async def test_endpointslices_follow_pod_readiness(client: Client) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "labels": {"team": "x"}},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
    }
    await client.post(f"{NS}/services", svc)
    port = [{"name": "web", "containerPort": 9090}]
    await client.post(f"{NS}/pods", pod("api-1", {"app": "api"}, ports=port))
    await client.post(f"{NS}/pods", pod("api-2", {"app": "api"}, ports=port))
    await client.post(f"{NS}/pods", pod("other", {"app": "other"}, ports=port))

    async def slice_endpoints() -> dict[str, Any]:
        slices = await _items(client, f"{SLICES}?labelSelector=kubernetes.io%2Fservice-name%3Dapi")
        if len(slices) != 1:
            return {}
        return {e["targetRef"]["name"]: e for e in slices[0]["endpoints"]} | {"_slice": slices[0]}

    async def has_placeholder() -> bool:
        eps = await slice_endpoints()
        return eps.get("_slice") is not None and len(eps) == 1

    await until(has_placeholder, what="placeholder slice")  # no pod has an IP yet
    await until(lambda: _all_scheduled(client), what="scheduled")
    ready = {
        "status": {
            "podIP": "10.244.1.10",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    await client.patch(f"{NS}/pods/api-1/status", ready)
    notready = {
        "status": {
            "podIP": "10.244.2.11",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
        }
    }
    await client.patch(f"{NS}/pods/api-2/status", notready)

    async def both() -> bool:
        return {"api-1", "api-2"} <= set(await slice_endpoints())

    await until(both, what="both endpoints")
    eps = await slice_endpoints()
    es = eps["_slice"]
    assert es["addressType"] == "IPv4" and es["ports"] == [{"name": "http", "port": 9090, "protocol": "TCP"}]
    assert (
        es["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
        == "endpointslice-controller.k8s.io"
    )
    assert es["metadata"]["labels"]["team"] == "x"
    assert es["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert es["metadata"]["name"].startswith("api-")
    e1, e2 = eps["api-1"], eps["api-2"]
    assert e1["addresses"] == ["10.244.1.10"] and e1["conditions"] == {
        "ready": True,
        "serving": True,
        "terminating": False,
    }
    assert e2["conditions"]["ready"] is False and e1["nodeName"] and e1["targetRef"]["kind"] == "Pod"
    assert "other" not in eps
    await client.patch(
        f"{NS}/pods/api-2/status", ready | {"status": {**ready["status"], "podIP": "10.244.2.11"}}
    )

    async def api2_ready() -> bool:
        return bool((await slice_endpoints()).get("api-2", {}).get("conditions", {}).get("ready"))

    await until(api2_ready, what="api-2 ready")
    await client.delete(f"{NS}/pods/api-1")

    async def api1_gone() -> bool:
        eps = await slice_endpoints()
        return "api-1" not in eps and "api-2" in eps

    await until(api1_gone, what="api-1 removed")
    await client.delete(f"{NS}/services/api")

    async def no_slices() -> bool:
        return not await _items(client, SLICES)

    await until(no_slices, what="slices garbage-collected")


async def test_manifest_directory_applies_updates_and_deletes(tmp_path: Path) -> None:
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "app.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\ndata: {k: v1}\n"
    )
    api = LocalApi(tmp_path / "data", nodes=1, manifests=mdir)
    api.manifests.interval = 0.1  # type: ignore[union-attr]
    await api.start()
    try:
        async with aiohttp.ClientSession() as s:
            c = Client(api.url, s)
            st, cm = await c.get("/api/v1/namespaces/shop/configmaps/cfg")
            assert st == 200 and cm["data"] == {"k": "v1"}
            (mdir / "app.yaml").write_text(
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\n"
                "data: {k: v2}\n---\n"
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: shop}\n"
            )

            async def updated() -> bool:
                st, cm = await c.get("/api/v1/namespaces/shop/configmaps/cfg")
                return st == 200 and cm["data"] == {"k": "v2"}

            await until(updated, what="manifest update")
            # A bad file applies nothing and names the document.
            (mdir / "bad.yaml").write_text(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: okay, namespace: shop}\n---\n"
                "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n"
            )
            await until(lambda: str(mdir / "bad.yaml") in api.manifests.errors, what="error")  # type: ignore[union-attr]
            assert "document 1" in api.manifests.errors[str(mdir / "bad.yaml")]  # type: ignore[union-attr]
            st, _ = await c.get("/api/v1/namespaces/shop/configmaps/okay")
            assert st == 404
            (mdir / "app.yaml").unlink()

            async def removed() -> bool:
                st1, _ = await c.get("/api/v1/namespaces/shop/configmaps/extra")
                st2, _ = await c.get("/api/v1/namespaces/shop")
                return st1 == 404 and st2 == 404

            await until(removed, what="objects of a deleted file removed")
    finally:
        await api.stop()


async def test_deleting_a_namespace_deletes_its_objects(client: Client) -> None:
    await client.post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}
    )
    st, _ = await client.post(
        "/api/v1/namespaces/tmp/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
    )
    assert st == 201
    st, _ = await client.post(
        "/api/v1/namespaces/tmp/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s"},
            "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]},
        },
    )
    assert st == 201
    await until(
        lambda: _has_items(client, "/apis/discovery.k8s.io/v1/namespaces/tmp/endpointslices"), what="slice"
    )
    await client.delete("/api/v1/namespaces/tmp")

    async def empty() -> bool:
        return not any(
            [
                await _has_items(client, "/api/v1/namespaces/tmp/configmaps"),
                await _has_items(client, "/api/v1/namespaces/tmp/services"),
                await _has_items(client, "/apis/discovery.k8s.io/v1/namespaces/tmp/endpointslices"),
            ]
        )

    await until(empty, what="namespace contents deleted")


async def _has_items(client: Client, path: str) -> bool:
    return bool(await _items(client, path))


async def test_endpointslices_hold_at_most_100_endpoints(client: Client, api: LocalApi) -> None:
    pod_kind = by_kind("Pod")
    await client.post(
        f"{NS}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "big"},
            "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]},
        },
    )
    for i in range(150):
        body = pod(f"big-{i:03d}", {"app": "big"}, node="node-1")
        body["metadata"]["namespace"] = "default"
        p = api.store.create(pod_kind, body)
        p["status"] = {
            "podIP": f"10.244.1.{i + 2}",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        api.store.update(pod_kind, p, status_only=True)

    async def sizes() -> list[int]:
        slices = await _items(client, f"{SLICES}?labelSelector=kubernetes.io%2Fservice-name%3Dbig")
        return sorted(len(s["endpoints"]) for s in slices)

    async def split() -> bool:
        return await sizes() == [50, 100]

    await until(split, what="150 endpoints in slices of 100 + 50")
    for i in range(60):
        api.store.delete(pod_kind, "default", f"big-{i:03d}")

    async def shrunk() -> bool:
        return await sizes() == [90]

    await until(shrunk, what="one slice of 90 after deletes")
