"""TLS termination (SDS only), TLS passthrough by SNI, TCPRoute: listener filter chains."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from conformance import objects as o
from conformance.certs import self_signed
from services.xds.translate import LISTENER, ROUTE, SECRET, TranslateInput, Translation, translate

NS = "infra"
PAIR = self_signed(["example.org"])


def _t(listeners: list[dict[str, Any]], *extra: dict[str, Any]) -> Translation:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, listeners),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.3"),
        o.service("web", NS, [("http", 8080, 3000)]),
        o.service("tls", NS, [("tls", 443, 8443)]),
        o.secret(NS, "cert", PAIR),
        *extra,
    ]
    return translate(TranslateInput(objects=o.inputs(*objs)))


def _listener(t: Translation, port: int) -> dict[str, Any]:
    return json_format.MessageToDict(t.resources[LISTENER][f"{NS}/cilium-gateway-gw/listener-{port}"])


HTTPS = {
    "name": "https",
    "port": 443,
    "protocol": "HTTPS",
    "hostname": "example.org",
    "tls": {"certificateRefs": [{"name": "cert"}]},
}


def test_https_termination_uses_sds_and_never_inlines_keys() -> None:
    t = _t([HTTPS], o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "web", "port": 8080}]}]))
    lst = _listener(t, 443)
    (chain,) = lst["filterChains"]
    assert chain["filterChainMatch"] == {"transportProtocol": "tls", "serverNames": ["example.org"]}
    ctx = chain["transportSocket"]["typedConfig"]["commonTlsContext"]
    assert ctx["tlsCertificateSdsSecretConfigs"][0]["name"] == f"{NS}/cert"
    assert "tlsCertificates" not in ctx
    assert lst["listenerFilters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    key_pem = PAIR[1].decode().split("\n")[1]
    assert key_pem not in str(t.resources[LISTENER]) and key_pem not in str(t.resources[ROUTE])
    sec = t.resources[SECRET][f"{NS}/cert"]
    assert sec.tls_certificate.private_key.inline_bytes == PAIR[1]


def test_two_https_listeners_get_separate_chains_and_421_for_misdirected_hosts() -> None:
    second = {**HTTPS, "name": "second", "hostname": "second.org"}
    t = _t([HTTPS, second], o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "web", "port": 8080}]}]))
    chains = _listener(t, 443)["filterChains"]
    assert sorted(c["filterChainMatch"]["serverNames"][0] for c in chains) == ["example.org", "second.org"]
    rc = json_format.MessageToDict(t.resources[ROUTE][f"{NS}/cilium-gateway-gw/listener-secure-443-https"])
    misdirected = {
        v["domains"][0]: v["routes"][0]["directResponse"]["status"]
        for v in rc["virtualHosts"]
        if v["name"].startswith("misdirected")
    }
    assert misdirected == {"second.org": 421, "*": 421}


def test_tls_passthrough_by_sni_to_tcp_proxy() -> None:
    listener = {
        "name": "tls",
        "port": 443,
        "protocol": "TLS",
        "hostname": "*.example.com",
        "tls": {"mode": "Passthrough"},
    }
    tr = o.route(
        "TLSRoute",
        "t",
        NS,
        {
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["abc.example.com"],
            "rules": [{"backendRefs": [{"name": "tls", "port": 443}]}],
        },
    )
    t = _t([listener], tr)
    lst = _listener(t, 443)
    (chain,) = lst["filterChains"]
    assert chain["filterChainMatch"] == {"transportProtocol": "tls", "serverNames": ["abc.example.com"]}
    (f,) = chain["filters"]
    assert f["name"] == "envoy.filters.network.tcp_proxy"
    assert f["typedConfig"]["cluster"] == f"{NS}:tls:443"
    assert "transportSocket" not in chain  # no termination
    assert lst["listenerFilters"][0]["name"] == "envoy.filters.listener.tls_inspector"


def test_tcproute_plain_tcp_proxy_with_weights() -> None:
    tcp = o.route(
        "TCPRoute",
        "t",
        NS,
        {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web", "port": 8080, "weight": 3},
                        {"name": "tls", "port": 443, "weight": 1},
                    ]
                }
            ],
        },
    )
    t = _t([{"name": "tcp", "port": 9000, "protocol": "TCP"}], tcp)
    (chain,) = _listener(t, 9000)["filterChains"]
    wc = chain["filters"][0]["typedConfig"]["weightedClusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in wc] == [(f"{NS}:web:8080", 3), (f"{NS}:tls:443", 1)]
    (st,) = [s for s in t.statuses if s.kind == "TCPRoute"]
    assert st.status["parents"][0]["conditions"][0]["status"] == "True"


def test_listener_binds_the_gateway_address_with_reuse_port() -> None:
    t = _t([{"name": "h", "port": 80, "protocol": "HTTP"}])
    lst = _listener(t, 80)
    assert lst["address"]["socketAddress"] == {"address": "127.0.100.3", "portValue": 80}
    assert lst["enableReusePort"] is True


def test_gateway_listener_without_routes_still_binds() -> None:
    t = _t([{"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}])
    (chain,) = _listener(t, 443)["filterChains"]
    assert chain["name"] == "empty"
