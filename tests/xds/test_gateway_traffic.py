"""Traffic management through a real Envoy: weighted split, header canary, blue-green, mirroring."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from conformance import objects as o
from conformance.client import http_request
from conformance.runner import expect_eventually
from conformance.standalone import Standalone

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
pytestmark = [ROOT_ONLY, pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

NS = "traffic"
T = {"gateway": f"{NS}/gw", "port": 80}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[Standalone]:
    async with Standalone() as c:
        await c.apply(
            [
                o.namespace(NS),
                o.service("blue", NS, [("http", 8080, 3000)]),
                o.service("green", NS, [("http", 8080, 3000)]),
                o.gateway("gw", NS, [{"name": "http", "port": 80, "protocol": "HTTP"}]),
            ]
        )
        await c.ensure_backends(
            [
                {
                    "service": f"{NS}/{n}",
                    "pods": {"namespace": NS, "deployment": n, "replicas": 2, "server": "echo-http"},
                }
                for n in ("blue", "green")
            ],
            {},
        )
        yield c


def ref(name: str, weight: int | None = None, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "port": 8080, **kw}
    if weight is not None:
        r["weight"] = weight
    return r


def _backend(pod: str) -> str:
    return "-".join(pod.split("-")[:-2])


async def _distribution(c: Standalone, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    addr = c.gateway_address(NS, "gw")

    def one(_: int) -> str:
        jitter = {"X-Jitter": str(random.randrange(10000))} if random.random() < 0.5 else {}
        resp = http_request(addr, 80, {"path": "/", "headers": headers or {}}, extra_headers=jitter)
        body = resp.json() if resp.status == 200 else None
        return _backend(str(body.get("pod", ""))) if body else f"status-{resp.status}"

    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(None, one, i) for i in range(n)))
    return Counter(results)


async def test_weighted_split_75_25_within_tolerance(cluster: Standalone) -> None:
    r = o.httproute("split", NS, "gw", [{"backendRefs": [ref("blue", 75), ref("green", 25)]}])
    await cluster.apply([r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{NS}/*"})
    # Upstream's rule: 500 requests, each backend within 5 percentage points of its weight; up to 10 tries.
    last: Counter[str] = Counter()
    for _ in range(10):
        last = await _distribution(cluster, 500)
        if set(last) == {"blue", "green"} and abs(last["blue"] / 500 - 0.75) <= 0.05:
            break
    else:
        raise AssertionError(f"distribution {dict(last)} is not 75/25 within 5 points")
    await cluster.delete([r])


async def test_weight_zero_gets_nothing(cluster: Standalone) -> None:
    r = o.httproute("zero", NS, "gw", [{"backendRefs": [ref("blue", 1), ref("green", 0)]}])
    await cluster.apply([r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{NS}/blue"})
    assert set(await _distribution(cluster, 100)) == {"blue"}
    await cluster.delete([r])


async def test_header_canary(cluster: Standalone) -> None:
    rules = [
        {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}], "backendRefs": [ref("green")]},
        {"backendRefs": [ref("blue")]},
    ]
    r = o.httproute("canary", NS, "gw", rules)
    await cluster.apply([r])
    await expect_eventually(
        cluster, T, {"path": "/", "headers": {"X-Canary": "true"}}, {"status": 200, "backend": f"{NS}/green"}
    )
    await expect_eventually(
        cluster, T, {"path": "/", "headers": {"X-Canary": "false"}}, {"status": 200, "backend": f"{NS}/blue"}
    )
    assert set(await _distribution(cluster, 50, {"X-Canary": "true"})) == {"green"}
    await cluster.delete([r])


async def test_blue_green_switch(cluster: Standalone) -> None:
    r = o.httproute("bg", NS, "gw", [{"backendRefs": [ref("blue")]}])
    await cluster.apply([r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{NS}/blue"})
    r["spec"]["rules"] = [{"backendRefs": [ref("green")]}]
    await cluster.apply([r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": 200, "backend": f"{NS}/green"})
    assert cluster.get("HTTPRoute", NS, "bg")["metadata"]["generation"] == 2  # type: ignore[index]
    await cluster.delete([r])


async def test_request_mirror_reaches_the_mirror_backend(cluster: Standalone) -> None:
    filters = [{"type": "RequestMirror", "requestMirror": {"backendRef": ref("green")}}]
    r = o.httproute("mirror", NS, "gw", [{"filters": filters, "backendRefs": [ref("blue")]}])
    await cluster.apply([r])
    path = f"/mirror?id={random.randrange(10**9)}"
    await expect_eventually(
        cluster,
        T,
        {"path": path},
        {
            "status": 200,
            "backend": f"{NS}/blue",
            "mirrored_to": [{"backend": f"{NS}/green", "request_uri": path}],
        },
    )
    await cluster.delete([r])


async def test_invalid_backend_share_answers_500(cluster: Standalone) -> None:
    r = o.httproute("partial", NS, "gw", [{"backendRefs": [ref("blue", 1), ref("missing", 1)]}])
    await cluster.apply([r])
    await expect_eventually(cluster, T, {"path": "/"}, {"status": [200, 500]})
    seen = await _distribution(cluster, 200)
    # Roughly half each; both must occur (p of missing either in 200 tries is ~1e-60).
    assert set(seen) == {"blue", "status-500"}, seen
    await cluster.delete([r])
