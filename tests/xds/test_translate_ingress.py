"""Ingress (dedicated and shared modes, path types, default backend, TLS); lb-l7: test_translate_lbl7."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from conformance import objects as o
from conformance.certs import self_signed
from services.xds.translate import LISTENER, ROUTE, SECRET, TranslateInput, Translation, translate

NS = "shop"


def ingress(
    name: str, rules: list[dict[str, Any]], cls: str | None = "nodemesh", **spec: Any
) -> dict[str, Any]:
    s: dict[str, Any] = {"rules": rules, **spec}
    if cls:
        s["ingressClassName"] = cls
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": NS,
            "generation": 1,
            "annotations": spec.pop("annotations", {}),
        },
        "spec": s,
    }


def path(p: str, ptype: str = "Prefix", svc: str = "web", port: int = 8080) -> dict[str, Any]:
    return {"path": p, "pathType": ptype, "backend": {"service": {"name": svc, "port": {"number": port}}}}


def _t(*objs: dict[str, Any]) -> Translation:
    base = [
        o.namespace(NS),
        o.service("web", NS, [("http", 8080, 3000)]),
        o.service("api", NS, [("http", 80, 3000)]),
    ]
    return translate(TranslateInput(objects=o.inputs(*base, *objs)))


def _vhosts(t: Translation, name: str) -> dict[str, list[dict[str, Any]]]:
    rc = json_format.MessageToDict(t.resources[ROUTE][name])
    return {v["name"]: v.get("routes", []) for v in rc["virtualHosts"]}


@pytest.mark.parametrize("cls", ["nodemesh", "cilium"])
def test_dedicated_ingress_served_on_its_own_address(cls: str) -> None:
    ing = ingress(
        "shop",
        [{"host": "shop.example.com", "http": {"paths": [path("/cart"), path("/api", svc="api", port=80)]}}],
        cls=cls,
    )
    t = _t(ing, o.lb_service(NS, "cilium-ingress-shop", "127.0.100.20"))
    lst = json_format.MessageToDict(t.resources[LISTENER][f"{NS}/cilium-ingress-shop/listener-80"])
    assert lst["address"]["socketAddress"] == {"address": "127.0.100.20", "portValue": 80}
    routes = _vhosts(t, f"{NS}/cilium-ingress-shop/listener-insecure-80")["shop.example.com"]
    # Longest prefix first: /cart before /api.
    assert [r["route"]["cluster"] for r in routes] == [f"{NS}:web:8080", f"{NS}:api:80"]
    (st,) = [s for s in t.statuses if s.kind == "Ingress"]
    assert st.status == {"loadBalancer": {"ingress": [{"ip": "127.0.100.20"}]}}


def test_other_ingress_class_is_ignored() -> None:
    t = _t(
        ingress("x", [{"http": {"paths": [path("/")]}}], cls="nginx"),
        o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"),
    )
    assert not t.resources[LISTENER] and not [s for s in t.statuses if s.kind == "Ingress"]


@pytest.mark.parametrize(
    ("ptype", "p", "match"),
    [
        ("Exact", "/a", {"path": "/a"}),
        ("Prefix", "/a", {"pathSeparatedPrefix": "/a"}),
        ("ImplementationSpecific", "/a.*", {"safeRegex": {"googleRe2": {}, "regex": "/a.*"}}),
    ],
)
def test_path_types(ptype: str, p: str, match: dict[str, Any]) -> None:
    t = _t(
        ingress("x", [{"http": {"paths": [path(p, ptype)]}}]),
        o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"),
    )
    (r,) = _vhosts(t, f"{NS}/cilium-ingress-x/listener-insecure-80")["*"]
    assert r["match"] == match


def test_wildcard_host_matches_one_label_and_default_backend_catches_the_rest() -> None:
    ing = ingress(
        "x",
        [{"host": "*.foo.com", "http": {"paths": [path("/", svc="api", port=80)]}}],
        defaultBackend={"service": {"name": "web", "port": {"number": 8080}}},
    )
    t = _t(ing, o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"))
    vh = _vhosts(t, f"{NS}/cilium-ingress-x/listener-insecure-80")
    first = vh["*.foo.com"][0]["match"]["headers"][0]
    assert first["name"] == ":authority" and first["stringMatch"]["safeRegex"]["regex"].startswith("^[^.]+")
    assert vh["*.foo.com"][-1]["route"]["cluster"] == f"{NS}:web:8080"
    assert [r["route"]["cluster"] for r in vh["*"]] == [f"{NS}:web:8080"]


def test_shared_mode_merges_ingresses_on_one_address() -> None:
    ann = {"ingress.cilium.io/loadbalancer-mode": "shared"}
    a = ingress("a", [{"host": "a.com", "http": {"paths": [path("/")]}}], annotations=ann)
    b = ingress("b", [{"host": "b.com", "http": {"paths": [path("/", svc="api", port=80)]}}], annotations=ann)
    t = _t(a, b, o.lb_service("kube-system", "cilium-ingress", "127.0.100.30"))
    assert list(t.resources[LISTENER]) == ["kube-system/cilium-ingress/listener-80"]
    assert set(_vhosts(t, "kube-system/cilium-ingress/listener-insecure-80")) == {"a.com", "b.com"}
    assert {
        s.name: s.status["loadBalancer"]["ingress"][0]["ip"] for s in t.statuses if s.kind == "Ingress"
    } == {"a": "127.0.100.30", "b": "127.0.100.30"}


def test_tls_and_force_https() -> None:
    pair = self_signed(["secure.com"])
    ing = ingress(
        "x",
        [{"host": "secure.com", "http": {"paths": [path("/")]}}],
        tls=[{"hosts": ["secure.com"], "secretName": "cert"}],
        annotations={"ingress.cilium.io/force-https": "enabled"},
    )
    t = _t(ing, o.secret(NS, "cert", pair), o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"))
    lst = json_format.MessageToDict(t.resources[LISTENER][f"{NS}/cilium-ingress-x/listener-443"])
    assert lst["filterChains"][0]["filterChainMatch"]["serverNames"] == ["secure.com"]
    assert f"{NS}/cert" in t.resources[SECRET]
    (r,) = _vhosts(t, f"{NS}/cilium-ingress-x/listener-insecure-80")["secure.com"]
    assert r["redirect"]["httpsRedirect"] is True


def test_missing_backend_answers_503() -> None:
    t = _t(
        ingress("x", [{"http": {"paths": [path("/", svc="gone")]}}]),
        o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"),
    )
    (r,) = _vhosts(t, f"{NS}/cilium-ingress-x/listener-insecure-80")["*"]
    assert r["directResponse"]["status"] == 503


def test_ingress_without_address_has_empty_status_and_no_listener() -> None:
    t = _t(ingress("x", [{"http": {"paths": [path("/")]}}]))
    assert not t.resources[LISTENER]
    (svc,) = t.lb_services  # the LoadBalancer Service it needs, for whoever creates Services
    assert (svc["metadata"]["namespace"], svc["metadata"]["name"], svc["spec"]["type"]) == (
        NS,
        "cilium-ingress-x",
        "LoadBalancer",
    )
    (st,) = [s for s in t.statuses if s.kind == "Ingress"]
    assert st.status == {"loadBalancer": {"ingress": []}}


def test_request_timeout_annotation() -> None:
    ing = ingress(
        "x", [{"http": {"paths": [path("/")]}}], annotations={"ingress.cilium.io/request-timeout": "5s"}
    )
    t = _t(ing, o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"))
    (r,) = _vhosts(t, f"{NS}/cilium-ingress-x/listener-insecure-80")["*"]
    assert r["route"]["timeout"] == "5s"


def test_tls_passthrough_annotation_routes_sni_without_terminating() -> None:
    ing = ingress(
        "x",
        [{"host": "db.example.com", "http": {"paths": [path("/", svc="api", port=80)]}}],
        annotations={"ingress.cilium.io/tls-passthrough": "enabled"},
    )
    t = _t(ing, o.lb_service(NS, "cilium-ingress-x", "127.0.100.20"))
    lst = json_format.MessageToDict(t.resources[LISTENER][f"{NS}/cilium-ingress-x/listener-443"])
    (chain,) = lst["filterChains"]
    assert chain["filterChainMatch"] == {"transportProtocol": "tls", "serverNames": ["db.example.com"]}
    assert chain["filters"][0]["typedConfig"]["cluster"] == f"{NS}:api:80"
    assert "transportSocket" not in chain
