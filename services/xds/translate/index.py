"""Lookups over the input objects: by namespace/name, ReferenceGrants, label selectors, hostnames, TLS."""

from __future__ import annotations

from typing import Any

from .types import Obj, TranslateInput

__all__ = [
    "Index",
    "as_dict",
    "as_list",
    "hostname_matches",
    "intersect_hostnames",
    "meta",
    "more_specific",
    "selector_matches",
]

GW_GROUP = "gateway.networking.k8s.io"


def as_dict(x: Any) -> dict[str, Any]:
    """``x`` if it is a mapping, else ``{}``: objects are untrusted, a wrong type must not crash."""
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> list[Any]:
    """``x`` if it is a list, else ``[]``."""
    return x if isinstance(x, list) else []


def as_int(x: Any, default: int = 0) -> int:
    """``x`` if it is an integer (not a bool), else ``default``."""
    return x if isinstance(x, int) and not isinstance(x, bool) else default


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def selector_matches(selector: Any, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against labels; bad selector → False."""
    if not isinstance(selector, dict):
        return False
    for k, v in (as_dict(selector.get("matchLabels"))).items():
        if labels.get(k) != v:
            return False
    for expr in as_list(selector.get("matchExpressions")):
        if not isinstance(expr, dict):
            return False
        key, op, values = expr.get("key", ""), expr.get("operator", ""), as_list(expr.get("values"))
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def hostname_matches(pattern: str, host: str) -> bool:
    """Gateway API hostname match: ``*.example.com`` matches any host with one or more extra labels."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def more_specific(a: str, b: str) -> bool:
    """Whether listener hostname ``a`` is more specific than ``b`` ("" = any is least specific)."""
    if not b:
        return bool(a)
    if not a:
        return False
    if not a.startswith("*.") and b.startswith("*."):
        return True
    if a.startswith("*.") and b.startswith("*."):
        return len(a) > len(b)
    return False


def intersect_hostnames(listener: str, route: list[str]) -> list[str]:
    """The hostnames a route serves on a listener (spec: HTTPRoute hostnames vs listener hostname).

    ``listener`` "" = any. An empty result means the route does not attach to the listener. ``["*"]``
    means any host.
    """
    if not route:
        return [listener or "*"]
    if not listener:
        return list(dict.fromkeys(route))
    out: list[str] = []
    for h in route:
        if h == listener or hostname_matches(listener, h):
            out.append(h)
        elif h.startswith("*.") and hostname_matches(h, listener):
            out.append(listener)
        elif h.startswith("*.") and listener.startswith("*.") and listener.endswith(h[1:]):
            out.append(listener)
    return list(dict.fromkeys(out))


class Index:
    """Objects of the input by kind and ``namespace/name``; namespace labels; ReferenceGrants."""

    def __init__(self, inp: TranslateInput) -> None:
        self.inp = inp
        self._by: dict[str, dict[str, Obj]] = {}
        for kind, objs in inp.objects.items():
            d: dict[str, Obj] = {}
            for o in objs:
                m = o.get("metadata") if isinstance(o, dict) else None
                # An object without a usable name cannot be referenced or patched: skip it.
                if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]:
                    if isinstance(m.get("namespace", ""), str):
                        d[f"{m.get('namespace', '')}/{m['name']}"] = o
            self._by[kind] = d
        # (ns, service, port name) → backendtls.BackendTLS; filled by the pipeline.
        self.backend_tls: dict[tuple[str, str, str], Any] = {}
        self.ns_labels: dict[str, dict[str, str]] = {}
        for ns in self._by.get("Namespace", {}).values():
            name = meta(ns).get("name", "")
            labels = dict(as_dict(meta(ns).get("labels")))
            labels.setdefault("kubernetes.io/metadata.name", name)
            self.ns_labels[name] = labels

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._by.get(kind, {}).get(f"{namespace}/{name}")

    def all(self, kind: str) -> list[Obj]:
        return sorted(
            self._by.get(kind, {}).values(),
            key=lambda o: (meta(o).get("namespace", ""), meta(o).get("name", "")),
        )

    def namespace_labels(self, ns: str) -> dict[str, str]:
        return self.ns_labels.get(ns, {"kubernetes.io/metadata.name": ns})

    def grant_allows(
        self,
        from_group: str,
        from_kind: str,
        from_ns: str,
        to_group: str,
        to_kind: str,
        to_ns: str,
        to_name: str,
    ) -> bool:
        """Whether a ReferenceGrant in ``to_ns`` allows a reference from ``from_kind`` in ``from_ns``."""
        for g in self._by.get("ReferenceGrant", {}).values():
            if meta(g).get("namespace") != to_ns:
                continue
            spec = as_dict(g.get("spec"))
            froms = as_list(spec.get("from"))
            tos = as_list(spec.get("to"))
            ok_from = any(
                isinstance(f, dict)
                and f.get("group", "") == from_group
                and f.get("kind") == from_kind
                and f.get("namespace") == from_ns
                for f in froms
            )
            if not ok_from:
                continue
            for t in tos:
                if not isinstance(t, dict):
                    continue
                if (
                    t.get("group", "") == to_group
                    and t.get("kind") == to_kind
                    and t.get("name") in (None, "", to_name)
                ):
                    return True
        return False

    def lb_address(self, namespace: str, service: str) -> str:
        """The first LoadBalancer ingress IP (or hostname) of a Service, "" when none yet."""
        svc = self.get("Service", namespace, service)
        if svc is None:
            return ""
        ingress = as_list((as_dict((as_dict(svc.get("status"))).get("loadBalancer"))).get("ingress"))
        for ing in ingress:
            if isinstance(ing, dict) and (ing.get("ip") or ing.get("hostname")):
                return str(ing.get("ip") or ing.get("hostname"))
        return ""


def valid_tls_secret(secret: Obj) -> bool:
    """A Secret holding a PEM certificate and a matching-looking PEM private key (as base64 data)."""
    import base64
    import binascii

    data = as_dict(secret.get("data"))
    if not isinstance(data, dict):
        return False
    try:
        crt = base64.b64decode(str(data.get("tls.crt", "")), validate=True)
        key = base64.b64decode(str(data.get("tls.key", "")), validate=True)
    except (binascii.Error, ValueError):
        return False
    if b"-----BEGIN CERTIFICATE-----" not in crt or b"PRIVATE KEY-----" not in key:
        return False
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        cert = x509.load_pem_x509_certificate(crt)
        pkey = load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return False
    # A key that does not belong to the certificate would make Envoy NACK the whole listener.
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == pkey.public_key().public_bytes(*fmt))
