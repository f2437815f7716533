"""Hubble's flow metrics as a Prometheus scrape of a service's real /metrics endpoint shows them.

Flows come from the real producers (ring-buffer events through services/datapath/flows.py, Envoy
access log entries through the access log receiver); the metrics are scraped over HTTP from the
service runtime's /metrics, the endpoint Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from nodemesh.config import ServiceConfig
from nodemesh.messages.flow import Endpoint, Workload
from nodemesh.runtime import Service, run_service
from services.datapath.accesslog.convert import DIRECTION_TAG
from services.datapath.accesslog.server import AccessLogServer
from services.datapath.flows import event_to_flow
from services.datapath.hubblemetrics import FlowMetrics
from services.datapath.maps import (
    DIR_EGRESS,
    DIR_INGRESS,
    EVT_DROP,
    EVT_POLICY_VERDICT,
    EVT_TRACE,
    Event,
    ip_to_be32,
)
from services.datapath.metricscontext import parse_context
from testkit.accesslog_entries import entry, message
from testkit.natsserver import NatsServer
from testkit.promscrape import label_names, total

WEB, DB = "10.244.1.5", "10.244.2.7"


class Dir:
    node = "node-1"
    version = 0
    pods = {WEB: ("shop", "web-5d8f7c9b6-abcde"), DB: ("shop", "db-0")}
    labels = {1001: ["k8s:app=web"], 1002: ["k8s:app.kubernetes.io/name=postgres", "k8s:app=db"]}

    def pod_of(self, ip: str) -> tuple[str, str]:
        return self.pods.get(ip, ("", ""))

    def labels_of(self, identity: int) -> list[str]:
        return self.labels.get(identity, [])

    def node_name(self, node_id: int) -> str:
        return "node-1"


def _ev(**kw: int) -> Event:
    base = dict(
        ts_ns=1, saddr=ip_to_be32(WEB), daddr=ip_to_be32(DB), src_identity=1001, dst_identity=1002,
        sport=socket.htons(40000), dport=socket.htons(5432), ep_id=7, proto=6, tcp_flags=0x02,
        dir=DIR_EGRESS, type=EVT_TRACE,
    )  # fmt: skip
    base.update(kw)
    return Event(**base)


ENDPOINTS = {
    WEB: Endpoint(
        identity=1001,
        namespace="shop",
        pod_name="web-5d8f7c9b6-abcde",
        labels=["k8s:app=web"],
        workloads=[Workload(name="web", kind="Deployment")],
    ),
    DB: Endpoint(
        identity=1002,
        namespace="shop",
        pod_name="db-0",
        labels=["k8s:app=db"],
        workloads=[Workload(name="db", kind="StatefulSet")],
    ),
}


async def _scrape(nats_server: NatsServer) -> str:
    """Feed every kind of flow to one FlowMetrics in a running service; return its /metrics text."""
    cfg = ServiceConfig(nats_url=nats_server.url, health_addr="127.0.0.1:0")
    stop = asyncio.Event()
    got: dict[str, str] = {}

    async def main(svc: Service) -> None:
        fm = FlowMetrics(svc.registry)
        d = Dir()
        for ev in (
            _ev(),  # SYN, from-endpoint
            _ev(dir=DIR_INGRESS, is_reply=1, tcp_flags=0x12),  # SYN-ACK, to-endpoint
            _ev(dir=DIR_INGRESS, proxy_port=socket.htons(15001), tcp_flags=0x11),  # FIN, to-proxy
            _ev(type=EVT_DROP, drop_reason=133, dir=DIR_INGRESS),
            _ev(type=EVT_POLICY_VERDICT, match_type=2, tcp_flags=0),
        ):
            fm.observe(event_to_flow(ev, d, 0))
        als = AccessLogServer("node-1", _no_publish, svc.registry, ENDPOINTS.get, flow_metrics=fm)
        e = entry(client=(WEB, 40000), upstream=(DB, 5432), code=503)
        e.common_properties.custom_tags[DIRECTION_TAG] = "EGRESS"
        await als.handle(message(e).SerializeToString())
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{svc.health_port}/metrics") as r,
        ):
            got["text"] = await r.text()
        stop.set()

    assert await run_service("datapath", cfg, main, install_signals=False, stop=stop) == 0
    return got["text"]


async def _no_publish(_subject: str, _flow: Any) -> None:
    return None


async def test_flows_processed_has_hubbles_type_subtype_and_counts_l7(nats_server: NatsServer) -> None:
    text = await _scrape(nats_server)
    m = "hubble_flows_processed_total"
    assert label_names(text, m) >= {"protocol", "type", "subtype", "verdict", "source", "destination"}
    assert total(text, m, type="Trace", subtype="from-endpoint", verdict="FORWARDED", protocol="TCP") == 1
    assert total(text, m, type="Trace", subtype="to-endpoint", verdict="FORWARDED") == 1
    assert total(text, m, type="Trace", subtype="to-proxy", verdict="REDIRECTED") == 1
    assert total(text, m, type="Drop", subtype="", verdict="DROPPED", protocol="TCP") == 1
    assert total(text, m, type="PolicyVerdict", subtype="", verdict="FORWARDED") == 1
    assert total(text, m, type="L7", subtype="HTTP", protocol="HTTP", verdict="FORWARDED") == 2  # req + resp
    assert total(text, m, type="L3_L4") == 0  # the label Hubble never uses
    # the context labels (labelsContext + source/destinationContext)
    ctx = {
        "source_namespace": "shop",
        "source_workload": "web",
        "source_app": "web",
        "destination_workload": "db",
        "destination_app": "postgres",  # app.kubernetes.io/name before app, as Hubble
        "traffic_direction": "egress",
        "source": "shop/web",
        "destination": "shop/db",
    }
    assert total(text, m, type="Trace", subtype="from-endpoint", **ctx) == 1


async def test_drop_tcp_http_metrics_have_hubbles_names_and_labels(nats_server: NatsServer) -> None:
    text = await _scrape(nats_server)
    assert (
        total(text, "hubble_drop_total", reason="POLICY_DENIED", protocol="TCP", destination_workload="db")
        == 1
    )
    assert total(text, "hubble_tcp_flags_total", flag="SYN", family="IPv4") == 1
    assert total(text, "hubble_tcp_flags_total", flag="SYN-ACK", family="IPv4") == 1
    assert total(text, "hubble_tcp_flags_total", flag="FIN", family="IPv4") == 1
    http = {"method": "GET", "reporter": "client", "status": "503", "traffic_direction": "egress"}
    assert (
        total(text, "hubble_http_requests_total", **http, source_workload="web", destination_workload="db")
        == 1
    )
    assert (
        total(text, "hubble_http_request_duration_seconds_count", source="shop/web", destination="shop/db")
        == 1
    )
    assert "_created" not in text  # prometheus_client's *_created series are off


def test_context_options_parse_like_hubbles() -> None:
    c = parse_context(
        "labelsContext=traffic_direction,source_namespace;sourceContext=pod-short|reserved-identity"
    )
    assert c.names() == ["source_namespace", "traffic_direction", "source"]  # Hubble's fixed label order
    assert parse_context("").names() == []
    for bad, msg in (
        ("labelsContext=source_ip_address", "invalid labelsContext value: source_ip_address"),
        ("sourceContext=pods", "unknown context 'pods'"),
        ("colour=blue", "unknown metrics context option 'colour'"),
        ("labelsContext", "is not key=value"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_context(bad)
