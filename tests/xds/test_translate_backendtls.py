"""BackendTLSPolicy: TLS origination to a Service, and fail-closed (500, never plaintext) when invalid."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from conformance import objects as o
from conformance.cases import Generated
from services.xds.translate import CLUSTER, ROUTE, TranslateInput, Translation, translate

NS = "btls"
GEN = Generated()


def policy(validation: dict[str, Any], section: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"group": "", "kind": "Service", "name": "secure"}
    if section:
        target["sectionName"] = section
    return {
        "apiVersion": "gateway.networking.k8s.io/v1alpha3",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": "p", "namespace": NS, "generation": 1},
        "spec": {"targetRefs": [target], "validation": validation},
    }


CA = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "ca", "namespace": NS},
    "data": {"ca.crt": GEN.ca_pair[0].decode()},
}
GOOD = {
    "hostname": "abc.example.com",
    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
}


def _t(*extra: dict[str, Any]) -> Translation:
    objs = [
        o.namespace(NS),
        o.gateway_class(),
        o.gateway("gw", NS, [{"name": "h", "port": 80, "protocol": "HTTP"}]),
        o.lb_service(NS, "cilium-gateway-gw", "127.0.100.4"),
        o.service("secure", NS, [("https", 443, 8443)]),
        o.httproute("r", NS, "gw", [{"backendRefs": [{"name": "secure", "port": 443}]}]),
        *extra,
    ]
    return translate(TranslateInput(objects=o.inputs(*objs)))


def _policy_status(t: Translation) -> list[dict[str, Any]]:
    (st,) = [s for s in t.statuses if s.kind == "BackendTLSPolicy"]
    return list(st.status["ancestors"])


def test_valid_policy_originates_tls_with_sni_and_san_check() -> None:
    t = _t(CA, policy(GOOD))
    c = json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:secure:443"])
    ctx = c["transportSocket"]["typedConfig"]
    assert ctx["sni"] == "abc.example.com"
    vc = ctx["commonTlsContext"]["validationContext"]
    assert vc["matchTypedSubjectAltNames"][0]["matcher"]["exact"] == "abc.example.com"
    assert "inlineBytes" in vc["trustedCa"]
    (anc,) = _policy_status(t)
    assert anc["ancestorRef"]["name"] == "gw"
    assert {(x["type"], x["status"]) for x in anc["conditions"]} == {
        ("Accepted", "True"),
        ("ResolvedRefs", "True"),
    }


def test_system_ca_bundle() -> None:
    t = _t(policy({"hostname": "abc.example.com", "wellKnownCACertificates": "System"}))
    c = json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:secure:443"])
    assert c["transportSocket"]["typedConfig"]["commonTlsContext"]["validationContext"]["trustedCa"][
        "filename"
    ]


def test_missing_ca_fails_closed_with_500_not_plaintext() -> None:
    t = _t(policy(GOOD))  # the ConfigMap does not exist
    assert f"{NS}:secure:443" not in t.resources[CLUSTER]
    rc = json_format.MessageToDict(next(iter(t.resources[ROUTE].values())))
    (route,) = [r for v in rc["virtualHosts"] for r in v.get("routes", [])]
    assert route["directResponse"]["status"] == 500
    (anc,) = _policy_status(t)
    assert ("ResolvedRefs", "False", "InvalidCACertificateRef") in {
        (x["type"], x["status"], x["reason"]) for x in anc["conditions"]
    }


def test_section_name_limits_the_policy_to_one_port() -> None:
    t = _t(CA, policy(GOOD, section="other-port"))
    c = json_format.MessageToDict(t.resources[CLUSTER][f"{NS}:secure:443"])
    assert "transportSocket" not in c
