"""The service map from flows (pure): workload names, edges, L7 golden signals, namespace filter."""

from __future__ import annotations

from typing import Any

import msgspec

from meshctl.ui.servicemap import build_map, flow_row, workload_of
from nodemesh.messages.flow import HTTP, L7
from tests.observe.flows import FE, WEB, WORLD, ep, flow


def _j(*flows: Any) -> list[dict[str, Any]]:
    return [msgspec.json.decode(msgspec.json.encode(f)) for f in flows]


def _resp(code: int, ms: float) -> L7:
    return L7(
        type="RESPONSE", latency_ns=int(ms * 1e6), http=HTTP(code=code, method="GET", url="http://web/x")
    )


def test_workload_names_like_hubble_ui() -> None:
    assert workload_of({"namespace": "prod", "labels": ["k8s:app=web"], "pod_name": "web-1"}) == (
        "prod",
        "web",
    )
    assert workload_of({"namespace": "n", "pod_name": "echo-a-5d8f9c7b6d-x2x9q"}) == ("n", "echo-a")
    assert workload_of({"namespace": "n", "pod_name": "job-abcde"}) == ("n", "job")
    assert workload_of({"identity": 1, "labels": ["reserved:host"]}) == ("", "reserved:host")
    assert workload_of(None) == ("", "unknown")
    assert workload_of({"identity": 70000}) == ("", "identity-70000")


def test_edges_count_verdicts_and_http_golden_signals() -> None:
    flows = _j(
        flow(FE, WEB, dport=8080),
        flow(WEB, FE, sport=8080, l7=_resp(200, 4)),  # responses go server → client, as Hubble's
        flow(WEB, FE, sport=8080, l7=_resp(200, 6)),
        flow(WEB, FE, sport=8080, l7=_resp(503, 10)),
        flow(WEB, FE, sport=8080, l7=_resp(403, 1)),
        flow(WORLD, WEB, dport=8080, verdict="DROPPED", reason="POLICY_DENIED"),
    )
    m = build_map(flows, window_s=10)
    assert {n["id"] for n in m["nodes"]} == {"prod/fe", "prod/web", "reserved:world"}
    edges = {(e["source"], e["target"]): e for e in m["edges"]}
    e = edges[("prod/fe", "prod/web")]
    assert e["flows"] == 5 and e["requests"] == 4 and e["errors"] == 2  # 503 and the proxy's 403
    assert e["error_share"] == 0.5 and e["latency_p50_ms"] == 6.0 and e["rate"] == 0.4
    assert "8080/TCP" in e["ports"]
    d = edges[("reserved:world", "prod/web")]
    assert d["dropped"] == 1 and d["forwarded"] == 0


def test_namespace_filter_and_replies() -> None:
    dev = ep("dev", "fe-xyz", 1002, "k8s:app=fe")
    reply = flow(WEB, FE)
    reply.is_reply = True
    m = build_map(_j(flow(FE, WEB), flow(dev, dev), reply), namespace="dev")
    assert [(e["source"], e["target"]) for e in m["edges"]] == [("dev/fe", "dev/fe")]


def test_a_flow_row_has_the_seeds_columns() -> None:
    (f,) = _j(flow(FE, WEB, dport=9200, l7=_resp(201, 0.4), direction="INGRESS"))  # a row is the flow as sent
    r = flow_row(f)
    assert r["source"] == "prod/fe" and r["destination"] == "prod/web" and r["port"] == "9200/TCP"
    assert r["l7"] == "GET http://web/x → 201 0ms"
    assert r["direction"] == "ingress" and r["verdict"] == "forwarded" and r["time"].startswith("2026-")


def test_malformed_flows_never_break_the_map() -> None:
    junk: list[Any] = [None, 3, {"source": "x", "destination": [1]}, {"l7": {"http": "no"}, "verdict": 5}]
    m = build_map(junk)
    assert isinstance(m["nodes"], list)


def test_l7_responses_count_on_the_request_edge() -> None:
    """Hubble's L7 response flows go server → client (and may be marked as replies): their code and
    latency belong to the client → server edge, not to a reverse edge."""
    req = flow(FE, WEB, dport=8080, l7=L7(type="REQUEST", http=HTTP(method="GET", url="http://web/")))
    resp = flow(WEB, FE, sport=8080, dport=40000, l7=_resp(200, 2))
    resp.is_reply = True
    m = build_map(_j(req, resp))
    assert [(e["source"], e["target"], e["requests"]) for e in m["edges"]] == [("prod/fe", "prod/web", 1)]
    assert m["edges"][0]["latency_p50_ms"] == 2.0
