"""Part C of the xds benchmark: the full path through the real service.

A real nats-server and the xds service (``services.xds.app``, real translator) in-process, one Delta
Envoy. Loaded: 10 Gateways, 1,000 HTTPRoutes (one hostname each), 1,000 Services, 1,000 EndpointSlices
of 10 endpoints. A change = one HTTPRoute switches its backend to another Service, published on the K8S
stream as the watcher would. Latency = publish → the node's ``XdsAck`` of the new route configuration
(so it includes the full re-translation, snapshot build, push and Envoy's apply; changes are 200 ms
apart, so the debounce's leading edge translates each at once).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from conformance.envoy import Envoy
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.messages.xds import XdsAck
from nodemesh.runtime import Service, run_service
from nodemesh.streams import provision
from services.xds.app import XdsApp
from services.xds.app import start as xds_start
from services.xds.bootstrap import render_bootstrap
from services.xds.config import XdsConfig
from services.xds.snapshot import ROUTE
from testkit.natsserver import NatsServer, free_port
from testkit.xdspki import TestPki

NS = "default"
GW = "gateway.networking.k8s.io/v1"


def _obj(api: str, kind: str, name: str, ns: str = NS, **rest: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": 1}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": api, "kind": kind, "metadata": meta, **rest}


def objects(n: int, groups: int, port: int) -> list[dict[str, Any]]:
    ctl = {"controllerName": "nodemesh.io/gateway-controller"}
    out = [_obj("v1", "Namespace", NS, ns=""), _obj(GW, "GatewayClass", "nodemesh", ns="", spec=ctl)]
    for g in range(groups):
        listeners = [{"name": "http", "protocol": "HTTP", "port": port}]
        out.append(
            _obj(GW, "Gateway", f"gw-{g}", spec={"gatewayClassName": "nodemesh", "listeners": listeners})
        )
        lb = {"loadBalancer": {"ingress": [{"ip": f"127.0.100.{200 + g}"}]}}
        spec = {"type": "LoadBalancer", "ports": [{"port": port}]}
        out.append(_obj("v1", "Service", f"cilium-gateway-gw-{g}", spec=spec, status=lb))
    for i in range(n):
        out.append(
            _obj(
                "v1",
                "Service",
                f"svc-{i}",
                spec={"ports": [{"port": 80, "name": "http", "targetPort": 8080}]},
            )
        )
        eps = [{"addresses": [f"127.2.{k}.{i % 250 + 1}"], "conditions": {"ready": True}} for k in range(10)]
        es = _obj("discovery.k8s.io/v1", "EndpointSlice", f"svc-{i}-x", addressType="IPv4", endpoints=eps,
                  ports=[{"name": "http", "port": 8080, "protocol": "TCP"}])  # fmt: skip
        es["metadata"]["labels"] = {"kubernetes.io/service-name": f"svc-{i}"}
        out.append(es)
        out.append(route(i, i, groups))
    return out


def route(i: int, backend: int, groups: int) -> dict[str, Any]:
    spec = {
        "parentRefs": [{"name": f"gw-{i % groups}"}],
        "hostnames": [f"host-{i}.example.com"],
        "rules": [{"backendRefs": [{"name": f"svc-{backend}", "port": 80}]}],
    }
    return _obj(GW, "HTTPRoute", f"r-{i}", spec=spec)


def event(obj: dict[str, Any]) -> tuple[str, ObjectEvent]:
    kind, meta = obj["kind"], obj["metadata"]
    ns = meta.get("namespace", "") if by_kind(kind).namespaced else ""
    ev = ObjectEvent(
        type="upsert", kind=kind, api_version=obj["apiVersion"], namespace=ns, name=meta["name"], obj=obj
    )
    return subjects.k8s_object(kind, ns, meta["name"]), ev


async def part_c(n: int = 1000, groups: int = 10, changes: int = 20) -> dict[str, Any]:
    with NatsServer() as nats:
        bus = await connect(nats.url, name="bench", max_wait=10)
        await provision(bus.js)
        for obj in objects(n, groups, free_port()):
            await bus.js_publish(*event(obj))
        seq = (await bus.js.stream_info("K8S")).state.last_seq
        await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="bench", epoch=1, stream_seq=int(seq)))
        acks: asyncio.Queue[tuple[float, XdsAck]] = asyncio.Queue()

        async def on_ack(msg: XdsAck, _: object) -> None:
            await acks.put((time.perf_counter(), msg))

        await bus.subscribe(subjects.xds_ack("*"), XdsAck, on_ack)
        grpc_port = free_port()
        pki = TestPki(("node-1",))  # ADS over mTLS, as deployed
        cfg = XdsConfig(
            nats_url=nats.url,
            grpc_addr=f"127.0.0.1:{grpc_port}",
            nodes="node-1",
            log_level="warning",
            tls_dir=pki.server_dir,
        )
        holder: dict[str, XdsApp] = {}

        async def main(svc: Service) -> None:
            holder["app"] = await xds_start(svc)

        stop = asyncio.Event()
        task = asyncio.create_task(run_service("xds", cfg, main, install_signals=False, stop=stop))
        boot = render_bootstrap("node-1", "127.0.0.1", grpc_port, 0, tls_dir=pki.node_dir("node-1"))
        envoy = Envoy(boot, concurrency=2, name="node-1")
        try:
            t = time.perf_counter()
            envoy.start()
            await envoy.wait_live(180)
            initial = time.perf_counter() - t
            lat: list[float] = []
            app = holder["app"]
            translate_s: list[float] = []
            prev_sum = app.m_translate_s._sum.get()
            for k in range(changes):
                i = (k * 37) % n
                target = (i + 1 + k) % n
                assert app.snaps is not None
                before = app.snaps.default.version(ROUTE)
                while not acks.empty():
                    acks.get_nowait()
                t0 = time.perf_counter()
                await bus.js_publish(*event(route(i, target, groups)))
                acked: dict[str, float] = {}
                while True:  # the ACK of the route version that carries this change
                    t1, msg = await asyncio.wait_for(acks.get(), 60)
                    if msg.type_url == ROUTE and msg.ack:
                        acked[msg.version] = t1
                    now_v = app.snaps.default.version(ROUTE)
                    if now_v != before and now_v in acked:
                        break
                lat.append(acked[now_v] - t0)
                tsum = app.m_translate_s._sum.get()
                translate_s.append(tsum - prev_sum)
                prev_sum = tsum
                await asyncio.sleep(0.2)  # independent changes, not a burst
            xs = sorted(lat)
            return {
                "initial_to_live_s": initial,
                "p50_ms": statistics.median(xs) * 1e3,
                "p99_ms": xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))] * 1e3,
                "n": len(xs),
                "translate_ms_median": statistics.median(translate_s) * 1e3,
            }
        finally:
            envoy.stop()
            stop.set()
            await asyncio.wait_for(task, 30)
            await bus.nc.close()
            pki.close()
