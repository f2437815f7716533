"""The upstream ConformanceReport: profiles, levels, statistics, and "not checked" never counted as passed."""

from __future__ import annotations

from pathlib import Path

import yaml

from conformance.runner import CaseResult
from conformance.upstream_report import conformance_report, profile_of, write_conformance_report

INDEX = [
    {"name": "GatewayInvalidRouteKind", "features_required": ["Gateway"]},
    {"name": "HTTPRouteSimpleSameNamespace", "features_required": ["Gateway", "HTTPRoute"]},
    {
        "name": "HTTPRouteMethodMatching",
        "features_required": ["Gateway", "HTTPRoute", "HTTPRouteMethodMatching"],
    },
    {"name": "TLSRouteSimpleSameNamespace", "features_required": ["Gateway", "TLSRoute"]},
    {"name": "GRPCRouteWeight", "features_required": ["Gateway", "GRPCRoute"]},
    {
        "name": "GRPCRouteRequestHeaderModifier",
        "features_required": ["Gateway", "GRPCRoute", "GRPCRouteRequestHeaderModifier"],
    },
]


def _r(
    name: str, feature: str, passed: bool = True, reason: str = "", unchecked: list[str] | None = None
) -> CaseResult:
    return CaseResult(name, feature, passed, reason, unchecked=unchecked or [])


def test_profiles_follow_the_required_features() -> None:
    assert profile_of(["Gateway", "HTTPRoute"]) == "GATEWAY-HTTP"
    assert profile_of(["Gateway", "TLSRoute"]) == "GATEWAY-TLS"
    assert profile_of(["Gateway", "HTTPRoute", "TLSRoute"]) == "GATEWAY-HTTP"
    assert profile_of(["Gateway", "GRPCRoute"]) == "GATEWAY-GRPC"
    assert profile_of(["Gateway"]) == "GATEWAY-HTTP"


def test_report_has_the_upstream_shape_and_counts(tmp_path: Path) -> None:
    results = [
        _r("GatewayInvalidRouteKind", "core/Gateway"),
        _r("HTTPRouteSimpleSameNamespace", "core/HTTPRoute"),
        _r("HTTPRouteMethodMatching", "extended/HTTPRouteMethodMatching", False, "status 404, want [200]"),
        _r("TLSRouteSimpleSameNamespace", "core/TLSRoute", False, "", ["namespaces_ready: no pods in x"]),
        _r("GRPCRouteWeight", "core/GRPCRoute"),
        _r("GRPCRouteRequestHeaderModifier", "extended/GRPCRouteRequestHeaderModifier"),
    ]
    rep = conformance_report(results, INDEX, gateway_api_version="v1.3.0", date="2026-12-07T00:00:00Z")
    assert rep["apiVersion"] == "gateway.networking.k8s.io/v1" and rep["kind"] == "ConformanceReport"
    assert rep["gatewayAPIVersion"] == "v1.3.0" and rep["gatewayAPIChannel"] == "experimental"
    assert rep["mode"] == "default" and rep["implementation"]["project"] == "nodemesh"
    profiles = {p["name"]: p for p in rep["profiles"]}
    assert set(profiles) == {"GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC"}
    http = profiles["GATEWAY-HTTP"]
    assert http["core"] == {"result": "success", "statistics": {"Failed": 0, "Passed": 2, "Skipped": 0}}
    assert http["extended"]["result"] == "failure"
    assert http["extended"]["failedTests"] == ["HTTPRouteMethodMatching"]
    assert http["extended"]["supportedFeatures"] == ["HTTPRouteMethodMatching"]
    tls = profiles["GATEWAY-TLS"]
    # not checked: skipped, and the level is partial, never success
    assert tls["core"]["result"] == "partial" and tls["core"]["statistics"]["Passed"] == 0
    assert tls["core"]["skippedTests"] == ["TLSRouteSimpleSameNamespace"]
    assert profiles["GATEWAY-GRPC"]["extended"]["result"] == "success"
    assert all(p["summary"] for p in rep["profiles"])

    path = tmp_path / "report.yaml"
    write_conformance_report(str(path), rep)
    assert yaml.safe_load(path.read_text()) == rep
