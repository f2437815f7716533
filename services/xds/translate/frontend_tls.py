"""Gateway ``spec.tls``: client-certificate validation of the frontend (GEP-91) and the backend client
certificate (GEP-3155).

``spec.tls.frontend.default`` applies to every TLS-terminating listener, ``perPort[]`` overrides it
for the listeners on one port. A validation's ``caCertificateRefs`` name ConfigMaps (key
``ca.crt``) in the Gateway's namespace, or in another one with a ReferenceGrant. Status follows the
spec: a bad reference sets the listener's ``ResolvedRefs=False`` (InvalidCACertificateRef,
InvalidCACertificateKind, RefNotPermitted); when no reference is usable the listener is also
``Accepted=False/NoValidCACertificate`` and gets no Envoy config at all, so a client never reaches
the routes without the validation it was promised (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .index import GW_GROUP, Index, as_dict, as_int, as_list

__all__ = ["ClientValidation", "backend_client_certificate", "frontend_validation"]

MODES = ("AllowValidOnly", "AllowInsecureFallback")


@dataclass
class ClientValidation:
    """What a listener's TLS chain enforces: the trusted CA bundle (PEM) and the spec's mode."""

    ca_pem: str
    mode: str = "AllowValidOnly"


@dataclass
class ValidationResult:
    validation: ClientValidation | None = None
    # (reason, message) for ResolvedRefs=False; empty when every reference resolved.
    problem: tuple[str, str] | None = None
    # True when the listener has a validation stanza but not one usable CA: Accepted=False.
    no_valid_ca: bool = False


def _validation_for(spec_tls: dict[str, Any], port: int) -> dict[str, Any] | None:
    frontend = as_dict(spec_tls.get("frontend"))
    for pp in as_list(frontend.get("perPort")):
        if isinstance(pp, dict) and as_int(pp.get("port")) == port:
            v = as_dict(pp.get("tls")).get("validation")
            return v if isinstance(v, dict) else None
    v = as_dict(frontend.get("default")).get("validation")
    return v if isinstance(v, dict) else None


def frontend_validation(idx: Index, gw_ns: str, spec: dict[str, Any], port: int) -> ValidationResult:
    """The client validation of a TLS-terminating listener on ``port`` (``spec`` is the Gateway's)."""
    v = _validation_for(as_dict(spec.get("tls")), port)
    if v is None:
        return ValidationResult()
    mode = str(v.get("mode") or "AllowValidOnly")
    res = ValidationResult()
    if mode not in MODES:
        res.problem = ("UnsupportedValue", f"frontend validation mode {mode!r} is not supported")
        res.no_valid_ca = True
        return res
    pems: list[str] = []
    for ref in as_list(v.get("caCertificateRefs")):
        reason, msg, pem = _ca_ref(idx, gw_ns, ref)
        if pem:
            pems.append(pem)
        elif res.problem is None:
            res.problem = (reason, msg)
    if not pems:
        res.no_valid_ca = True
        if res.problem is None:
            res.problem = ("InvalidCACertificateRef", "no caCertificateRefs")
        return res
    res.validation = ClientValidation(ca_pem="\n".join(pems), mode=mode)
    return res


def _ca_ref(idx: Index, gw_ns: str, ref: Any) -> tuple[str, str, str]:
    """(reason, message, PEM): the PEM is empty when the reference cannot be used."""
    if not isinstance(ref, dict):
        return "InvalidCACertificateRef", "caCertificateRef is not an object", ""
    kind, group = str(ref.get("kind", "")), str(ref.get("group", ""))
    name = str(ref.get("name", ""))
    if group not in ("", "core") or kind != "ConfigMap":
        return "InvalidCACertificateKind", f"caCertificateRef {group}/{kind} {name}: only ConfigMap", ""
    ns = str(ref.get("namespace") or gw_ns)
    if ns != gw_ns and not idx.grant_allows(GW_GROUP, "Gateway", gw_ns, "", "ConfigMap", ns, name):
        return "RefNotPermitted", f"ConfigMap {ns}/{name} is not granted to the Gateway", ""
    cm = idx.get("ConfigMap", ns, name)
    pem = str(as_dict((cm or {}).get("data")).get("ca.crt") or "")
    if cm is None:
        return "InvalidCACertificateRef", f"ConfigMap {ns}/{name} not found", ""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return "InvalidCACertificateRef", f"ConfigMap {ns}/{name} has no PEM certificate in ca.crt", ""
    return "", "", pem


def backend_client_certificate(spec: dict[str, Any]) -> dict[str, Any] | None:
    """``spec.tls.backend.clientCertificateRef`` when set (nodemesh refuses it: see gateway_status)."""
    ref = as_dict(as_dict(as_dict(spec.get("tls")).get("backend"))).get("clientCertificateRef")
    return ref if isinstance(ref, dict) else None
