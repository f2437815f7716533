"""kube-system/kube-dns in a local cluster: the Service pods' resolv.conf names (10.96.0.10), its
EndpointSlice pointing at the local DNS server, kept by a controller; and headless pods' host names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localcluster.apiserver.app import LocalApi
from nodemesh.kinds import by_kind
from tests.localapi.helpers import Client, pod, until

SVC = "/api/v1/namespaces/kube-system/services/kube-dns"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices"
DNS_ADDR = "169.254.20.10"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[LocalApi]:
    a = LocalApi(tmp_path, nodes=1, bookmark_interval=0.2, dns_addr=DNS_ADDR)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


@pytest.fixture
async def client(api: LocalApi) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as s:
        yield Client(api.url, s)


async def dns_slices(c: Client) -> list[dict[str, Any]]:
    st, body = await c.get(SLICES + "?labelSelector=kubernetes.io/service-name%3Dkube-dns")
    assert st == 200, body
    return list(body["items"])


async def test_kube_dns_service_and_slice(client: Client) -> None:
    st, svc = await client.get(SVC)
    assert st == 200, svc
    assert svc["spec"]["clusterIP"] == "10.96.0.10" and "selector" not in svc["spec"]
    assert [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
    ]

    async def one_slice() -> bool:
        return len(await dns_slices(client)) == 1

    await until(one_slice, what="kube-dns slice")
    (es,) = await dns_slices(client)
    assert es["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "nodemesh.io/local-dns"
    assert es["endpoints"] == [
        {"addresses": [DNS_ADDR], "conditions": {"ready": True, "serving": True, "terminating": False}}
    ]
    assert sorted((p["name"], p["port"], p["protocol"]) for p in es["ports"]) == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
    ]
    assert es["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]


async def test_slice_is_put_back(client: Client) -> None:
    async def slice_with(addr: str) -> bool:
        items = await dns_slices(client)
        return len(items) == 1 and items[0]["endpoints"][0]["addresses"] == [addr]

    await until(lambda: slice_with(DNS_ADDR), what="slice")
    (es,) = await dns_slices(client)
    es["endpoints"][0]["addresses"] = ["10.1.2.3"]
    st, _ = await client.put(f"{SLICES}/{es['metadata']['name']}", es)
    assert st == 200
    await until(lambda: slice_with(DNS_ADDR), what="edited slice restored")
    st, _ = await client.delete(f"{SLICES}/{es['metadata']['name']}")
    assert st == 200
    await until(lambda: slice_with(DNS_ADDR), what="deleted slice recreated")


async def test_a_new_server_address_is_followed_and_the_service_comes_back(tmp_path: Path) -> None:
    first = LocalApi(tmp_path, nodes=1, dns_addr=DNS_ADDR)
    await first.start()
    first.store.delete(by_kind("Service"), "kube-system", "kube-dns")
    await first.stop()
    second = LocalApi(tmp_path, nodes=1, dns_addr="169.254.20.11", bookmark_interval=0.2)
    await second.start()
    try:
        async with aiohttp.ClientSession() as s:
            c = Client(second.url, s)
            assert (await c.get(SVC))[0] == 200

            async def moved() -> bool:
                items = await dns_slices(c)
                return [i["endpoints"][0]["addresses"] for i in items] == [["169.254.20.11"]]

            await until(moved, what="slice follows the address")
    finally:
        await second.stop()


async def test_no_dns_server_no_kube_dns(tmp_path: Path) -> None:
    api = LocalApi(tmp_path, nodes=1)
    await api.start()
    try:
        assert api.store.peek("Service", "kube-system", "kube-dns") is None
    finally:
        await api.stop()


async def test_allocation_never_hands_out_the_dns_ip(tmp_path: Path) -> None:
    api = LocalApi(tmp_path, nodes=1)  # even without kube-dns, .10 stays reserved for it
    await api.start()
    try:
        kind = by_kind("Service")
        ips = []
        for i in range(12):
            obj = {"metadata": {"name": f"s{i}", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}
            ips.append(api.store.create(kind, obj)["spec"]["clusterIP"])
        assert "10.96.0.10" not in ips and "10.96.0.11" in ips
    finally:
        await api.stop()


async def test_a_service_already_on_the_dns_ip_keeps_it(tmp_path: Path) -> None:
    api = LocalApi(tmp_path, nodes=1)
    await api.start()
    taken = {"metadata": {"name": "old", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.10"}}
    api.store.create(by_kind("Service"), taken)
    await api.stop()
    again = LocalApi(tmp_path, nodes=1, dns_addr=DNS_ADDR)
    await again.start()
    try:
        assert again.store.peek("Service", "kube-system", "kube-dns") is None
        old = again.store.peek("Service", "default", "old")
        assert old is not None and old["spec"]["clusterIP"] == "10.96.0.10"
    finally:
        await again.stop()


async def test_headless_pod_hostnames_in_endpointslices(client: Client) -> None:
    svcs = "/api/v1/namespaces/default/services"
    headless = {"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "selector": {"app": "db"}}}
    assert (await client.post(svcs, headless))[0] == 201
    named = pod("db-0", {"app": "db"}, node="node-1")
    named["spec"].update(hostname="db-0", subdomain="db")
    other = pod("db-x", {"app": "db"}, node="node-1")
    other["spec"].update(hostname="db-x", subdomain="elsewhere")
    for p, ip in ((named, "10.244.1.7"), (other, "10.244.1.8")):
        assert (await client.post("/api/v1/namespaces/default/pods", p))[0] == 201
        st, cur = await client.get(f"/api/v1/namespaces/default/pods/{p['metadata']['name']}")
        cur["status"] = {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        st, _ = await client.put(f"/api/v1/namespaces/default/pods/{p['metadata']['name']}/status", cur)
        assert st == 200

    async def hostnames() -> dict[str, str | None] | None:
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        st, body = await client.get(path + "?labelSelector=kubernetes.io/service-name%3Ddb")
        assert st == 200, body
        eps = [e for es in body["items"] for e in es.get("endpoints") or []]
        return {e["addresses"][0]: e.get("hostname") for e in eps} if len(eps) == 2 else None

    async def both() -> bool:
        return await hostnames() is not None

    await until(both, what="two endpoints")
    assert await hostnames() == {"10.244.1.7": "db-0", "10.244.1.8": None}
