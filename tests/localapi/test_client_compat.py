"""The official ``kubernetes`` client's typed API and ``watch.Watch`` work against the local server,
including its 410 handling — the protocol is the real one, not just what our watcher expects."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from localcluster.apiserver.app import LocalApi


def _api(url: str) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    cfg.host = url
    return k8s.ApiClient(cfg)


async def test_typed_client_crud_list_and_watch(api: LocalApi) -> None:
    def scenario() -> tuple[list[str], list[tuple[str, str]], int]:
        with _api(api.url) as ac:
            core = k8s.CoreV1Api(ac)
            nodes = [n.metadata.name for n in core.list_node().items]
            cm = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="typed"), data={"a": "1"})
            created = core.create_namespaced_config_map("default", cm)
            rv = created.metadata.resource_version
            core.patch_namespaced_config_map("typed", "default", {"data": {"a": "2"}})
            core.delete_namespaced_config_map("typed", "default")
            events = []
            w = k8s_watch.Watch()
            for ev in w.stream(
                core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5
            ):
                events.append((ev["type"], ev["object"].metadata.name))
                if ev["type"] == "DELETED":
                    w.stop()
            with pytest.raises(ApiException) as ei:
                core.read_namespaced_config_map("typed", "default")
            return nodes, events, ei.value.status

    nodes, events, status = await asyncio.to_thread(scenario)
    assert nodes == ["node-1", "node-2"]
    assert events == [("MODIFIED", "typed"), ("DELETED", "typed")]
    assert status == 404


async def test_typed_watch_raises_410_on_expired_rv(api: LocalApi) -> None:
    def scenario() -> int:
        with _api(api.url) as ac:
            core = k8s.CoreV1Api(ac)
            w = k8s_watch.Watch()
            try:
                for _ in w.stream(
                    core.list_namespaced_config_map, "default", resource_version="1", timeout_seconds=5
                ):
                    pass
            except ApiException as e:
                return int(e.status)
            return 0

    for i in range(3):
        api.store.create(k8s_kind(), {"metadata": {"name": f"c{i}", "namespace": "default"}})
    api.store.compact()
    assert await asyncio.to_thread(scenario) == 410


def k8s_kind():  # type: ignore[no-untyped-def]
    from nodemesh.kinds import by_kind

    return by_kind("ConfigMap")


async def test_typed_client_decodes_controller_made_objects(api: LocalApi) -> None:
    def create() -> None:
        with _api(api.url) as ac:
            apps = k8s.AppsV1Api(ac)
            core = k8s.CoreV1Api(ac)
            labels = {"app": "t"}
            tmpl = k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="busybox")]),
            )
            dep = k8s.V1Deployment(
                metadata=k8s.V1ObjectMeta(name="t"),
                spec=k8s.V1DeploymentSpec(
                    replicas=2, selector=k8s.V1LabelSelector(match_labels=labels), template=tmpl
                ),
            )
            apps.create_namespaced_deployment("default", dep)
            svc = k8s.V1Service(
                metadata=k8s.V1ObjectMeta(name="t"),
                spec=k8s.V1ServiceSpec(
                    type="LoadBalancer", selector=labels, ports=[k8s.V1ServicePort(port=80)]
                ),
            )
            core.create_namespaced_service("default", svc)

    def read() -> tuple[int, int, str, int, str]:
        with _api(api.url) as ac:
            apps = k8s.AppsV1Api(ac)
            core = k8s.CoreV1Api(ac)
            disc = k8s.DiscoveryV1Api(ac)
            pods = core.list_namespaced_pod("default", label_selector="app=t").items
            rss = apps.list_namespaced_replica_set("default").items
            svc = core.read_namespaced_service("t", "default")
            slices = disc.list_namespaced_endpoint_slice(
                "default", label_selector="kubernetes.io/service-name=t"
            ).items
            dep = apps.read_namespaced_deployment("t", "default")
            ingress = svc.status.load_balancer.ingress or []
            return (
                len(pods),
                len(rss),
                ingress[0].ip if ingress else "",
                len(slices),
                str(dep.status.replicas),
            )

    await asyncio.to_thread(create)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        got = await asyncio.to_thread(read)
        if got == (2, 1, "", 1, "2") or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    # The LoadBalancer address is the operator's to give (tests/watcher/test_operator.py).
    assert got == (2, 1, "", 1, "2")
