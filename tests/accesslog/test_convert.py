"""The pure core: one Envoy access log entry → Hubble request/response flows and metric facts."""

from __future__ import annotations

from meshctl.flowfilter import build_filters, matches
from nodemesh import codec
from nodemesh.messages.flow import Endpoint, Flow, Workload
from nodemesh.messages.identity import IPCacheEntry
from services.datapath.accesslog.convert import (
    DIRECTION_TAG,
    EVENT_TYPE_L7,
    convert,
    endpoint_label,
    no_enrich,
    workload_of,
)
from services.datapath.accesslog.enrich import mirror_enricher
from services.datapath.accesslog.metrics import reporter
from testkit.accesslog_entries import entry

PODS = {
    "10.244.1.5": Endpoint(
        identity=300, namespace="shop", pod_name="web-5d8f7c9b6-abcde", labels=["k8s:app=web"]
    ),
    "10.244.2.7": Endpoint(identity=301, namespace="shop", pod_name="echo-0", labels=["k8s:app=echo"]),
}


def enrich(ip: str) -> Endpoint | None:
    return PODS.get(ip)


def test_request_and_response_flows_carry_method_url_code_and_latency() -> None:
    r = convert(entry(method="POST", path="/cart", code=201, latency_ms=12), "node-1", enrich)
    req, resp = r.request, r.response
    assert req.Type == resp.Type == "L7"
    assert req.l7 is not None and req.l7.http is not None and req.l7.type == "REQUEST"
    assert (req.l7.http.method, req.l7.http.url, req.l7.http.protocol) == (
        "POST",
        "http://example.com/cart",
        "HTTP/1.1",
    )
    assert resp.l7 is not None and resp.l7.http is not None and resp.l7.type == "RESPONSE"
    assert resp.l7.http.code == 201 and resp.l7.latency_ns == "12000000"
    assert req.verdict == resp.verdict == "FORWARDED"
    assert req.traffic_direction == "INGRESS" and req.node_name == "node-1"
    assert req.event_type == {"type": EVENT_TYPE_L7}
    # Request: client → server; response: its reply, endpoints swapped (as Hubble prints them).
    assert req.source == PODS["10.244.1.5"] and req.destination == PODS["10.244.2.7"]
    assert resp.source == PODS["10.244.2.7"] and resp.destination == PODS["10.244.1.5"] and resp.is_reply
    assert req.ip is not None and (req.ip.source, req.ip.destination) == ("10.244.1.5", "10.244.2.7")
    assert req.l4 is not None and req.l4.tcp is not None and req.l4.tcp.destination_port == 3000
    assert req.time == "2023-11-14T22:13:20.000000005Z"
    assert resp.time == "2023-11-14T22:13:20.012000005Z"
    assert {"key": "X-Request-Id", "value": "rid-1"} in req.l7.http.headers
    assert resp.Summary == "HTTP/1.1 201 12ms (POST http://example.com/cart)"
    assert req.Summary == "HTTP/1.1 POST http://example.com/cart"
    # The flows are wire-clean Hubble JSON.
    assert codec.decode(codec.encode(resp), Flow) == resp


def test_rbac_denied_is_dropped_and_no_response_is_error() -> None:
    denied = entry(code=403, details="rbac_access_denied_matched_policy[none]", upstream=None)
    r = convert(denied, "n", enrich)
    assert r.request.verdict == r.response.verdict == "DROPPED"
    flagged = entry(code=403, upstream=None)
    flagged.common_properties.response_flags.unauthorized_details.reason = 1
    assert convert(flagged, "n", enrich).response.verdict == "DROPPED"
    assert convert(entry(code=403), "n", enrich).response.verdict == "FORWARDED"  # the backend said 403
    gone = convert(entry(code=None), "n", enrich)
    assert gone.response.verdict == "ERROR" and gone.code == 0


def test_direct_response_destination_is_the_listener_and_unknown_ips_are_world() -> None:
    r = convert(entry(code=404, upstream=None, client=("192.0.2.9", 5555)), "n", enrich)
    assert r.request.ip is not None and r.request.ip.destination == "127.0.100.1"
    assert r.client.identity == 2 and r.client.labels == ["reserved:world"]
    assert endpoint_label(r.client) == "world"
    r2 = convert(entry(), "n", no_enrich)
    assert r2.server.identity == 2


def test_query_is_redacted_and_urls_are_bounded() -> None:
    r = convert(entry(path="/login?token=secret&u=1"), "n", enrich)
    assert r.request.l7 is not None and r.request.l7.http is not None
    assert r.request.l7.http.url == "http://example.com/login?HUBBLE_REDACTED"
    long = convert(entry(path="/" + "a" * 10_000), "n", enrich)
    assert long.request.l7 is not None and long.request.l7.http is not None
    assert len(long.request.l7.http.url) == 2048


def test_metric_labels_are_namespace_workload_not_pods() -> None:
    assert workload_of(PODS["10.244.1.5"]) == "web"  # Deployment pod
    assert workload_of(PODS["10.244.2.7"]) == "echo"  # StatefulSet pod
    assert workload_of(Endpoint(namespace="x", pod_name="standalone")) == "standalone"
    assert endpoint_label(PODS["10.244.1.5"]) == "shop/web"
    assert endpoint_label(Endpoint(identity=1, labels=["reserved:host"])) == "host"


def test_observe_type_l7_selects_l7_flows_only() -> None:
    r = convert(entry(), "n", enrich)
    allow = build_filters(types=["l7"])
    assert matches(r.request, allow) and matches(r.response, allow)
    l3 = Flow(time="2023-11-14T22:13:20Z", verdict="FORWARDED", event_type={"type": 4})
    assert not matches(l3, allow)


class FakeAgent:
    """The datapath agent's mirrors, as ``mirror_enricher`` reads them."""

    def __init__(self) -> None:
        self.version = 1
        self.node_ip = "127.0.50.1"
        self.ipcache = {
            "10.244.1.5": IPCacheEntry(
                ip="10.244.1.5", identity=300, node="node-1", namespace="shop", pod="web-5d8f7c9b6-abcde"
            )
        }
        self.labels = {300: ["k8s:app=web"], 1: ["reserved:host"]}

    def labels_of(self, identity: int) -> list[str]:
        return self.labels.get(identity, [])


def test_mirror_enricher_reads_the_ipcache_and_follows_its_version() -> None:
    agent = FakeAgent()
    enrich = mirror_enricher(agent)
    ep = enrich("10.244.1.5")
    assert ep == Endpoint(
        identity=300,
        namespace="shop",
        pod_name="web-5d8f7c9b6-abcde",
        labels=["k8s:app=web"],
        workloads=[Workload(name="web", kind="Deployment")],
    )
    assert enrich("127.0.50.1") == Endpoint(identity=1, labels=["reserved:host"])
    assert enrich("192.0.2.1") is None
    del agent.ipcache["10.244.1.5"]
    assert enrich("10.244.1.5") == ep  # cached for this version
    agent.version += 1
    assert enrich("10.244.1.5") is None


def test_direction_comes_from_the_listener_tag() -> None:
    e = entry()
    e.common_properties.custom_tags[DIRECTION_TAG] = "EGRESS"  # an L7 egress policy listener
    r = convert(e, "n", enrich)
    assert r.request.traffic_direction == r.response.traffic_direction == r.direction == "EGRESS"
    assert reporter(r.direction) == "client"
    e.common_properties.custom_tags[DIRECTION_TAG] = "sideways"  # not ours: the default applies
    assert convert(e, "n", enrich, "INGRESS").direction == "INGRESS"
    assert reporter("INGRESS") == "server" and reporter("") == "unknown"
