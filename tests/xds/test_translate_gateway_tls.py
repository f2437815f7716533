"""Gateway ``spec.tls`` and ``spec.addresses`` in translation (no Envoy): status reasons and Envoy mapping."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from conformance import objects as o
from conformance.certs import make_ca, self_signed
from services.xds.translate import LISTENER, TranslateInput, Translation, translate

NS, OTHER = "infra", "other"
PAIR = self_signed(["*.example.com", "example.com"])
CA_PEM = make_ca()[0][0].decode()
HTTPS = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}}


def _ca(ns: str, name: str, pem: str = CA_PEM) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": ns, "name": name},
        "data": {"ca.crt": pem},
    }


def _translate(
    spec_extra: dict[str, Any], listeners: list[dict[str, Any]], *extra: dict[str, Any]
) -> Translation:
    gw = o.gateway("gw", NS, listeners)
    gw["spec"].update(spec_extra)
    objs = [
        o.namespace(NS),
        o.namespace(OTHER),
        o.gateway_class(),
        gw,
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.7"),
        o.secret(NS, "cert", PAIR),
        o.service("web", NS, [("http", 8080, 3000)]),
        o.endpoint_slice("web", NS, [("http", 3000)], ["10.0.0.1"]),
        o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "web", "port": 8080}]}]),
        *extra,
    ]
    return translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))


def _gw_status(t: Translation) -> dict[str, Any]:
    return next(s.status for s in t.statuses if s.kind == "Gateway")


def _cond(conds: list[dict[str, Any]], ctype: str) -> tuple[str, str]:
    c = next(c for c in conds if c["type"] == ctype)
    return c["status"], c["reason"]


def _validation(refs: list[dict[str, Any]], mode: str = "", per_port: int = 0) -> dict[str, Any]:
    v: dict[str, Any] = {"caCertificateRefs": refs}
    if mode:
        v["mode"] = mode
    if per_port:
        return {
            "tls": {"frontend": {"default": {}, "perPort": [{"port": per_port, "tls": {"validation": v}}]}}
        }
    return {"tls": {"frontend": {"default": {"validation": v}}}}


def _tls_contexts(t: Translation) -> list[tls_pb2.DownstreamTlsContext]:
    out = []
    for lst in t.resources[LISTENER].values():
        assert isinstance(lst, listener_pb2.Listener)
        for ch in lst.filter_chains:
            if ch.transport_socket.name:
                ctx = tls_pb2.DownstreamTlsContext()
                ch.transport_socket.typed_config.Unpack(ctx)
                out.append(ctx)
    return out


CM = {"group": "", "kind": "ConfigMap", "name": "ca"}


def test_frontend_validation_requires_a_client_certificate_from_the_configmap_ca() -> None:
    t = _translate(_validation([CM]), [HTTPS], _ca(NS, "ca"))
    (lst,) = _gw_status(t)["listeners"]
    assert _cond(lst["conditions"], "Accepted") == ("True", "Accepted")
    assert _cond(lst["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")
    (ctx,) = _tls_contexts(t)
    assert ctx.require_client_certificate.value is True
    assert ctx.common_tls_context.validation_context.trusted_ca.inline_bytes.decode() == CA_PEM
    assert ctx.common_tls_context.validation_context.trust_chain_verification == 0  # VERIFY_TRUST_CHAIN


def test_insecure_fallback_asks_for_a_certificate_but_accepts_none_or_untrusted() -> None:
    t = _translate(_validation([CM], "AllowInsecureFallback"), [HTTPS], _ca(NS, "ca"))
    (ctx,) = _tls_contexts(t)
    assert ctx.require_client_certificate.value is False
    vc = ctx.common_tls_context.validation_context
    assert vc.trust_chain_verification == common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED


def test_per_port_validation_overrides_the_default_only_on_its_port() -> None:
    other_port = {**HTTPS, "name": "https-8443", "port": 8443}
    t = _translate(_validation([CM], per_port=8443), [HTTPS, other_port], _ca(NS, "ca"))
    by_port = {}
    for lst in t.resources[LISTENER].values():
        assert isinstance(lst, listener_pb2.Listener)
        ctx = tls_pb2.DownstreamTlsContext()
        lst.filter_chains[0].transport_socket.typed_config.Unpack(ctx)
        by_port[lst.address.socket_address.port_value] = ctx.require_client_certificate.value
    assert by_port == {443: False, 8443: True}


@pytest.mark.parametrize(
    ("ref", "extra", "reason"),
    [
        ({**CM, "name": "missing"}, [], "InvalidCACertificateRef"),
        ({"group": "", "kind": "Secret", "name": "ca"}, [], "InvalidCACertificateKind"),
        ({**CM, "namespace": OTHER}, [_ca(OTHER, "ca")], "RefNotPermitted"),
        (CM, [_ca(NS, "ca", "not a certificate")], "InvalidCACertificateRef"),
    ],
)
def test_an_unusable_ca_refuses_the_listener_and_serves_nothing(
    ref: dict[str, Any], extra: list[dict[str, Any]], reason: str
) -> None:
    t = _translate(_validation([ref]), [HTTPS], *extra)
    (lst,) = _gw_status(t)["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("False", reason)
    assert _cond(lst["conditions"], "Accepted") == ("False", "NoValidCACertificate")
    assert _tls_contexts(t) == []  # fail closed: no chain that would skip the validation


def test_one_bad_ca_among_good_ones_is_reported_but_the_good_one_is_enforced() -> None:
    t = _translate(_validation([CM, {**CM, "name": "missing"}]), [HTTPS], _ca(NS, "ca"))
    (lst,) = _gw_status(t)["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("False", "InvalidCACertificateRef")
    assert _cond(lst["conditions"], "Accepted") == ("True", "Accepted")
    (ctx,) = _tls_contexts(t)
    assert ctx.require_client_certificate.value is True


def test_cross_namespace_ca_with_a_grant_is_used() -> None:
    grant = o.grant(OTHER, "g", "Gateway", NS, "ConfigMap", "ca")
    t = _translate(_validation([{**CM, "namespace": OTHER}]), [HTTPS], _ca(OTHER, "ca"), grant)
    (lst,) = _gw_status(t)["listeners"]
    assert _cond(lst["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")
    assert len(_tls_contexts(t)) == 1


def test_backend_client_certificate_refuses_the_gateway() -> None:
    t = _translate({"tls": {"backend": {"clientCertificateRef": {"name": "cert"}}}}, [HTTPS])
    assert _cond(_gw_status(t)["conditions"], "Accepted") == ("False", "UnsupportedValue")
    assert not t.resources[LISTENER]


@pytest.mark.parametrize(
    "address",
    [{"type": "Hostname", "value": "gw.example.com"}, {"type": "test/fake-invalid-type", "value": "x"}],
)
def test_unsupported_address_types_refuse_the_gateway(address: dict[str, Any]) -> None:
    t = _translate({"addresses": [address]}, [HTTPS])
    assert _cond(_gw_status(t)["conditions"], "Accepted") == ("False", "UnsupportedAddress")
    assert not t.resources[LISTENER]


def test_an_empty_address_value_takes_the_allocated_address() -> None:
    """GatewayAddressEmpty: ``{type: IPAddress}`` with no value gets the LB-IPAM address."""
    t = _translate({"addresses": [{"type": "IPAddress"}]}, [HTTPS])
    status = _gw_status(t)
    assert _cond(status["conditions"], "Accepted") == ("True", "Accepted")
    assert status["addresses"] == [{"type": "IPAddress", "value": "127.0.100.7"}]


def test_infrastructure_parameters_ref_refuses_the_gateway() -> None:
    ref = {"group": "example.com", "kind": "GatewayParams", "name": "p"}
    t = _translate({"infrastructure": {"parametersRef": ref}}, [HTTPS])
    assert _cond(_gw_status(t)["conditions"], "Accepted") == ("False", "InvalidParameters")
    assert not t.resources[LISTENER]


def test_gatewayclass_with_parameters_ref_is_refused_and_serves_no_gateway() -> None:
    gc = o.gateway_class()
    gc["spec"]["parametersRef"] = {"group": "", "kind": "ConfigMap", "name": "params", "namespace": NS}
    objs = [
        o.namespace(NS),
        gc,
        o.gateway("gw", NS, [HTTPS]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.7"),
    ]
    t = translate(TranslateInput(objects=o.inputs(*objs), now="2024-05-01T00:00:00Z"))
    gc_status = next(s.status for s in t.statuses if s.kind == "GatewayClass")
    assert _cond(gc_status["conditions"], "Accepted") == ("False", "InvalidParameters")
    assert not [s for s in t.statuses if s.kind == "Gateway"] and not t.resources[LISTENER]
