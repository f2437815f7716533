"""The operator through the watcher: Gateways and Ingresses get their LoadBalancer Services and
addresses from CiliumLoadBalancerIPPools, written by the watcher over the API server's real
list/watch protocol (the local API server no longer runs these controllers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localcluster.apiserver.app import LocalApi
from nodemesh.bus import Bus
from nodemesh.messages.k8s import ObjectWrite, WriteResult
from nodemesh.runtime import Service, run_service
from services.operator.app import main as operator_main
from services.operator.config import OperatorConfig
from testkit.natsserver import NatsServer
from tests.localapi.helpers import Client, until
from tests.watcher.harness import InProcessWatcher

NS = "/api/v1/namespaces/default"
GWS = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways"
ING = "/apis/networking.k8s.io/v1/namespaces/default/ingresses"
POOLS = "/apis/cilium.io/v2alpha1/ciliumloadbalancerippools"
SHARED = "/api/v1/namespaces/kube-system/services/cilium-ingress"


class InProcessOperator:
    def __init__(self, nats_url: str, operator_id: str) -> None:
        self.cfg = OperatorConfig(nats_url=nats_url, operator_id=operator_id, resync_s=2.0)
        self.stop_event = asyncio.Event()
        self.svc: Service | None = None
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> InProcessOperator:
        async def main(svc: Service) -> None:
            self.svc = svc
            await operator_main(svc)

        self.task = asyncio.create_task(
            run_service("operator", self.cfg, main, install_signals=False, stop=self.stop_event)
        )
        await until(lambda: self.svc is not None and self.svc.ready, 60, "operator ready")
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            assert await asyncio.wait_for(self.task, 30) == 0


@pytest.fixture
async def cluster(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Client]:
    api = LocalApi(tmp_path / "data", nodes=1, bookmark_interval=0.5, lb_pool="127.0.100.0/29")
    await api.start()
    w = await InProcessWatcher(nats_server.url, api.url, "w1").start()
    op = await InProcessOperator(nats_server.url, "op1").start()
    try:
        async with aiohttp.ClientSession() as s:
            yield Client(api.url, s)
    finally:
        await op.stop()
        await w.stop()
        await api.stop()


def _lb_ip(svc: dict[str, Any] | None) -> str:
    ingress = ((svc or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or [{}]
    return str(ingress[0].get("ip", ""))


def _cond(obj: dict[str, Any] | None, typ: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return dict(c)
    return {}


async def _get(c: Client, path: str) -> dict[str, Any] | None:
    st, body = await c.get(path)
    return body if st == 200 else None


async def test_gateway_gets_its_service_and_address_through_operator_and_watcher(cluster: Client) -> None:
    c = cluster
    lb = {"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    await c.post(f"{NS}/services", {**lb, "metadata": {"name": "one"}})
    await c.post(f"{NS}/services", {**lb, "metadata": {"name": "two"}})
    await c.post(f"{NS}/services", {**lb, "metadata": {"name": "cip"}, "spec": {"ports": [{"port": 80}]}})

    async def ips() -> dict[str, str]:
        _, body = await c.get(f"{NS}/services")
        return {x["metadata"]["name"]: _lb_ip(x) for x in body["items"]}

    async def assigned(names: set[str]) -> bool:
        got = await ips()
        return all(got.get(n) for n in names)

    await until(lambda: assigned({"one", "two"}), what="LB addresses")
    got = await ips()
    # The local pool 127.0.100.0/29: first and last address are not given out (allowFirstLastIPs No).
    assert got["one"] == "127.0.100.1" and got["two"] == "127.0.100.2" and got["cip"] == ""
    one = await _get(c, f"{NS}/services/one")
    assert _cond(one, "cilium.io/IPAMRequestSatisfied")["status"] == "True"
    # Released on delete and reused.
    await c.delete(f"{NS}/services/one")
    await c.post(f"{NS}/services", {**lb, "metadata": {"name": "three"}})
    await until(lambda: assigned({"three"}), what="reuse")
    assert (await ips())["three"] == "127.0.100.1"
    # A requested address in the pool is honoured; one outside every pool gets none, with the reason.
    want = {**lb, "metadata": {"name": "want"}}
    want["spec"] = {"type": "LoadBalancer", "loadBalancerIP": "127.0.100.5", "ports": [{"port": 80}]}
    await c.post(f"{NS}/services", want)
    away = {**lb, "metadata": {"name": "away", "annotations": {"lbipam.cilium.io/ips": "10.9.9.9"}}}
    await c.post(f"{NS}/services", away)
    await until(lambda: assigned({"want"}), what="requested")
    assert (await ips())["want"] == "127.0.100.5"

    async def refused() -> bool:
        return (
            _cond(await _get(c, f"{NS}/services/away"), "cilium.io/IPAMRequestSatisfied").get("reason")
            == "no_pool"
        )

    await until(refused, what="no_pool condition")
    assert (await ips())["away"] == ""

    # A Gateway of our class gets cilium-gateway-<name>, owned by it, with an address; another class none.
    gw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge"},
        "spec": {
            "gatewayClassName": "nodemesh",
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "https", "port": 443, "protocol": "HTTPS"},
            ],
            "infrastructure": {"labels": {"team": "a"}, "annotations": {"cost-center": "42"}},
        },
    }
    st, gwo = await c.post(GWS, gw)
    assert st == 201
    await c.post(
        GWS, {**gw, "metadata": {"name": "foreign"}, "spec": {**gw["spec"], "gatewayClassName": "istio"}}
    )
    await until(lambda: assigned({"cilium-gateway-edge"}), what="gateway service address")
    svc = await _get(c, f"{NS}/services/cilium-gateway-edge")
    assert svc is not None and svc["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in svc["spec"]["ports"]] == ["port-80", "port-443"]
    node_ports = [p["nodePort"] for p in svc["spec"]["ports"]]
    ref = svc["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "Gateway" and ref["uid"] == gwo["metadata"]["uid"] and ref["controller"] is True
    assert svc["metadata"]["labels"]["io.cilium.gateway/owning-gateway"] == "edge"
    assert svc["metadata"]["labels"]["team"] == "a" and svc["metadata"]["annotations"]["cost-center"] == "42"
    assert "cilium-gateway-foreign" not in await ips()
    # A listener added: the Service follows and keeps the nodePorts already allocated.
    gw["spec"]["listeners"].append({"name": "alt", "port": 8080, "protocol": "HTTP"})
    _, cur = await c.get(f"{GWS}/edge")
    await c.put(f"{GWS}/edge", {**cur, "spec": gw["spec"]})

    async def three_ports() -> bool:
        s = await _get(c, f"{NS}/services/cilium-gateway-edge")
        return s is not None and len(s["spec"]["ports"]) == 3

    await until(three_ports, what="listener port")
    svc = await _get(c, f"{NS}/services/cilium-gateway-edge")
    assert svc is not None and [p["nodePort"] for p in svc["spec"]["ports"][:1]] == node_ports[:1]
    await c.delete(f"{GWS}/edge")

    async def gw_svc_gone() -> bool:
        return "cilium-gateway-edge" not in await ips()

    await until(gw_svc_gone, what="gateway service removed")


async def test_pools_selectors_and_conflicts(cluster: Client) -> None:
    c = cluster
    pool = {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumLoadBalancerIPPool"}
    await c.post(
        POOLS,
        {
            **pool,
            "metadata": {"name": "team-blue"},
            "spec": {
                "blocks": [{"start": "127.0.101.10", "stop": "127.0.101.11"}],
                "serviceSelector": {"matchLabels": {"color": "blue"}},
            },
        },
    )
    # Overlaps "local" (127.0.100.0/29), which is older: in conflict, gives out nothing.
    await c.post(
        POOLS, {**pool, "metadata": {"name": "overlap"}, "spec": {"blocks": [{"cidr": "127.0.100.4/30"}]}}
    )

    async def conflict() -> bool:
        return _cond(await _get(c, f"{POOLS}/overlap"), "cilium.io/PoolConflict").get("status") == "True"

    await until(conflict, what="pool conflict condition")
    local = await _get(c, f"{POOLS}/local")
    assert _cond(local, "cilium.io/PoolConflict")["status"] == "False"
    assert _cond(local, "cilium.io/IPsTotal")["message"] == "6"
    svc = {"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    await c.post(f"{NS}/services", {**svc, "metadata": {"name": "blue", "labels": {"color": "blue"}}})

    async def blue_ip() -> str:
        return _lb_ip(await _get(c, f"{NS}/services/blue"))

    await until(blue_ip, what="blue address")
    # The oldest matching pool serves first: "local" selects every Service, so it gives the address.
    assert await blue_ip() == "127.0.100.1"
    # Disable "local": no new addresses from it; a new blue Service gets one from "team-blue".
    _, cur = await c.get(f"{POOLS}/local")
    await c.put(f"{POOLS}/local", {**cur, "spec": {**cur["spec"], "disabled": True}})
    await asyncio.sleep(0)
    await c.post(f"{NS}/services", {**svc, "metadata": {"name": "blue2", "labels": {"color": "blue"}}})
    await c.post(f"{NS}/services", {**svc, "metadata": {"name": "plain"}})

    async def blue2() -> str:
        return _lb_ip(await _get(c, f"{NS}/services/blue2"))

    await until(blue2, what="blue2 address")
    assert await blue2() == "127.0.101.10" and await blue_ip() == "127.0.100.1"

    async def plain_refused() -> bool:
        return (
            _cond(await _get(c, f"{NS}/services/plain"), "cilium.io/IPAMRequestSatisfied").get("reason")
            == "no_pool"
        )

    await until(plain_refused, what="no enabled pool for plain")


async def test_ingress_lb_services(cluster: Client) -> None:
    c = cluster

    def ingress(
        name: str, cls: str = "nodemesh", annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        path = {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}},
        }
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"ingressClassName": cls, "rules": [{"http": {"paths": [path]}}]},
        }

    async def has_ip(path: str) -> bool:
        return bool(_lb_ip(await _get(c, path)))

    async def gone(path: str) -> bool:
        return await _get(c, path) is None

    st, ing = await c.post(ING, ingress("shop"))
    assert st == 201, ing
    await until(
        lambda: has_ip(f"{NS}/services/cilium-ingress-shop"), what="dedicated ingress service address"
    )
    s = await _get(c, f"{NS}/services/cilium-ingress-shop")
    assert s is not None and s["spec"]["type"] == "LoadBalancer"
    assert {p["port"] for p in s["spec"]["ports"]} == {80, 443}
    assert [r["uid"] for r in s["metadata"]["ownerReferences"]] == [ing["metadata"]["uid"]]
    shared = {"ingress.cilium.io/loadbalancer-mode": "shared"}
    await c.post(ING, ingress("a", annotations=shared))
    await c.post(ING, ingress("b", annotations=shared))
    await until(lambda: has_ip(SHARED), what="shared ingress service address")
    assert await _get(c, f"{NS}/services/cilium-ingress-a") is None
    # Another class: no Service. A user's Service with our name is left alone.
    await c.post(ING, ingress("other", cls="nginx"))
    user = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cilium-ingress-mine"}}
    user["spec"] = {"ports": [{"port": 8080}]}
    await c.post(f"{NS}/services", user)
    await c.post(ING, ingress("mine"))
    await c.delete(f"{ING}/shop")
    await until(lambda: gone(f"{NS}/services/cilium-ingress-shop"), what="dedicated service removed")
    await c.delete(f"{ING}/a")
    await c.delete(f"{ING}/b")
    await until(lambda: gone(SHARED), what="shared service removed")
    assert await _get(c, f"{NS}/services/cilium-ingress-other") is None
    mine = await _get(c, f"{NS}/services/cilium-ingress-mine")
    assert mine is not None and mine["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in mine["spec"]["ports"]] == [8080]
    # A malformed Ingress never stalls the operator.
    bad = ingress("bad")
    bad["spec"]["rules"] = "oops"
    await c.post(ING, bad)
    await c.post(ING, ingress("after"))
    await until(lambda: has_ip(f"{NS}/services/cilium-ingress-after"), what="operator still works")


async def test_watcher_refuses_writes_beyond_the_operators(cluster: Client, bus: Bus) -> None:
    """What a k8s.write request may do is checked by the watcher, not trusted to the sender."""
    c = cluster
    user = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "cilium-gateway-x"},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "db"}},
    }
    await c.post(f"{NS}/services", user)

    async def write(w: ObjectWrite) -> WriteResult:
        from nodemesh import subjects

        return await bus.request(subjects.k8s_write(w.kind, w.namespace, w.name), w, WriteResult)

    # A user's Service of an operator name: neither patched nor deleted.
    r = await write(
        ObjectWrite(
            op="delete", kind="Service", api_version="v1", namespace="default", name="cilium-gateway-x"
        )
    )
    assert (r.ok, r.code) == (False, 403)
    # Another kind, a selector, a mismatched subject: refused.
    r = await write(
        ObjectWrite(op="create", kind="Secret", api_version="v1", namespace="default", name="s", obj={})
    )
    assert (r.ok, r.code) == (False, 403)
    evil = {
        "metadata": {"name": "cilium-gateway-y", "labels": {"nodemesh.io/managed-by": "nodemesh-operator"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "db"}, "ports": [{"port": 80}]},
    }
    r = await write(
        ObjectWrite(
            op="create",
            kind="Service",
            api_version="v1",
            namespace="default",
            name="cilium-gateway-y",
            obj=evil,
        )
    )
    assert (r.ok, r.code) == (False, 403) and "selector" in r.message
    assert await _get(c, f"{NS}/services/cilium-gateway-y") is None
    x = await _get(c, f"{NS}/services/cilium-gateway-x")
    assert x is not None and x["spec"]["selector"] == {"app": "db"}


async def test_standby_operator_takes_over(tmp_path: Path, nats_server: NatsServer) -> None:
    """Two operators share the lease: only the holder writes; when it stops, the standby serves."""
    api = LocalApi(tmp_path / "data", nodes=1, bookmark_interval=0.5)
    await api.start()
    w = await InProcessWatcher(nats_server.url, api.url, "w1").start()
    first = await InProcessOperator(nats_server.url, "op-a").start()
    second = await InProcessOperator(nats_server.url, "op-b").start()
    try:
        async with aiohttp.ClientSession() as s:
            c = Client(api.url, s)
            gw = {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "a"},
                "spec": {
                    "gatewayClassName": "cilium",
                    "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}],
                },
            }
            await c.post(GWS, gw)
            await until(lambda: _has_ip(c, "cilium-gateway-a"), what="address from the first holder")

            def leader(op: InProcessOperator) -> float:
                assert op.svc is not None
                return float(op.svc.registry.get_sample_value("nodemesh_operator_leader") or 0.0)

            assert sorted([leader(first), leader(second)]) == [0.0, 1.0]
            active, standby = (first, second) if leader(first) else (second, first)
            await active.stop()
            await c.post(GWS, {**gw, "metadata": {"name": "b"}})
            await until(lambda: _has_ip(c, "cilium-gateway-b"), what="address from the standby")
            assert leader(standby) == 1.0
    finally:
        for op in (first, second):
            if op.task is not None and not op.task.done():
                await op.stop()
        await w.stop()
        await api.stop()


async def _has_ip(c: Client, name: str) -> bool:
    return bool(_lb_ip(await _get(c, f"{NS}/services/{name}")))
