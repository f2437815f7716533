"""Translation of HTTPRoute retry, CORS, backendRef filters and sessionPersistence (no Envoy)."""

from __future__ import annotations

from typing import Any

from conformance import objects as o
from services.xds.translate import TranslateInput, translate
from services.xds.translate.envoy_route import CORS_FILTER

NS = "f"


def _route(name: str, prefix: str, **rule: Any) -> dict[str, Any]:
    return o.httproute(
        name,
        NS,
        "gw",
        [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backendRefs": [{"name": "v1", "port": 8080}],
                **rule,
            }
        ],
    )


def _translate(*routes: dict[str, Any]) -> Any:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.endpoint_slice("v1", NS, [("http", 3000)], ["10.0.0.1"]),
        o.gateway("gw", NS, [{"name": "http", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        *routes,
    ]
    return translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))


def _envoy_routes(t: Any) -> list[Any]:
    rcs = t.resources["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
    return [r for rc_ in rcs.values() for vh in rc_.virtual_hosts for r in vh.routes]


def test_session_persistence_is_refused_in_status() -> None:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.service("v1", NS, [("http", 8080, 3000)]),
        o.gateway("gw", NS, [{"name": "http", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.9"),
        _route("sticky", "/", sessionPersistence={"sessionName": "s", "type": "Cookie"}),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))
    (st,) = [s.status for s in t.statuses if s.kind == "HTTPRoute" and s.name == "sticky"]
    (acc,) = [c for c in st["parents"][0]["conditions"] if c["type"] == "Accepted"]
    assert (acc["status"], acc["reason"]) == ("False", "UnsupportedValue")
    assert "sessionPersistence" in acc["message"]


def test_retry_and_cors_become_envoy_route_settings() -> None:
    t = _translate(
        _route("r", "/r", retry={"codes": [502, 503, 999], "attempts": 4, "backoff": "100ms"}),
        _route("c", "/c", filters=[{"type": "CORS", "cors": {"allowOrigins": ["*"], "maxAge": 7}}]),
    )
    routes = {r.match.path_separated_prefix: r for r in _envoy_routes(t)}
    pol = routes["/r"].route.retry_policy
    assert pol.retry_on == "connect-failure,reset,retriable-status-codes"
    assert list(pol.retriable_status_codes) == [502, 503]  # 999 is not a status code: dropped
    assert pol.num_retries.value == 4 and pol.retry_back_off.base_interval.ToMilliseconds() == 100
    assert CORS_FILTER in routes["/c"].typed_per_filter_config
    assert CORS_FILTER not in routes["/r"].typed_per_filter_config
