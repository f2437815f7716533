"""Structural checks for ``metadata`` and for the core kinds' fields nodemesh reads.

Core kinds (Pod, Service, Deployment, …) have no CRD schema to vendor, so this checks the shape of
the fields the local controllers and services use, with Kubernetes' own name rules
(DNS-1123 subdomain for names, DNS-1123 label for namespaces). It is deliberately not a full
re-implementation of kube-apiserver validation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from nodemesh import lbl7

__all__ = ["core_problems", "metadata_problems"]

Problems = list[tuple[str, str]]
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _str_map(value: Any, field: str, out: Problems) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        out.append((field, "must be a map of strings"))
        return
    for k, v in value.items():
        if not isinstance(v, str):
            out.append((f"{field}.{k}", f"must be a string, got {type(v).__name__} (quote it)"))


def metadata_problems(obj: dict[str, Any], namespaced: bool) -> Problems:
    out: Problems = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [("metadata", "required field is missing" if meta is None else "must be a map")]
    name = meta.get("name")
    if not name:
        out.append(("metadata.name", "required field is missing"))
    elif not isinstance(name, str) or len(name) > 253 or not _SUBDOMAIN.match(name):
        out.append(("metadata.name", f"{name!r} is not a valid name (lower-case DNS-1123 subdomain)"))
    ns = meta.get("namespace")
    if ns is not None:
        if not namespaced:
            out.append(("metadata.namespace", f"{obj.get('kind')} is cluster-scoped and has no namespace"))
        elif not isinstance(ns, str) or len(ns) > 63 or not _LABEL.match(ns):
            out.append(("metadata.namespace", f"{ns!r} is not a valid namespace (DNS-1123 label)"))
    _str_map(meta.get("labels"), "metadata.labels", out)
    _str_map(meta.get("annotations"), "metadata.annotations", out)
    return out


def _port(value: Any, field: str, out: Problems, allow_name: bool = False) -> None:
    if isinstance(value, bool) or value is None:
        out.append((field, "must be a port number"))
    elif isinstance(value, int):
        if not 1 <= value <= 65535:
            out.append((field, f"{value} is not a valid port (1-65535)"))
    elif not (allow_name and isinstance(value, str) and _PORT_NAME.match(value)):
        out.append((field, f"{value!r} is not a valid port"))


def _list(value: Any, field: str, out: Problems, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            out.append((field, "required field is missing"))
        return []
    if not isinstance(value, list):
        out.append((field, "must be a list"))
        return []
    return value


def _map(value: Any, field: str, out: Problems, required: bool = False) -> dict[str, Any]:
    if value is None:
        if required:
            out.append((field, "required field is missing"))
        return {}
    if not isinstance(value, dict):
        out.append((field, "must be a map"))
        return {}
    return value


def _protocol(value: Any, field: str, out: Problems) -> None:
    if value is not None and value not in ("TCP", "UDP", "SCTP"):
        out.append((field, f"{value!r} is not one of TCP, UDP, SCTP"))


def _pod_spec(spec: Any, field: str, out: Problems) -> None:
    spec = _map(spec, field, out, required=True)
    containers = _list(spec.get("containers"), f"{field}.containers", out, required=True)
    if spec and not containers and "containers" in spec:
        out.append((f"{field}.containers", "must have at least one container"))
    for i, c in enumerate(containers):
        cf = f"{field}.containers[{i}]"
        if not isinstance(c, dict):
            out.append((cf, "must be a map"))
            continue
        if not isinstance(c.get("name"), str) or not _LABEL.match(c.get("name") or ""):
            out.append((f"{cf}.name", "required: a DNS-1123 label"))
        if not c.get("image") and not c.get("command"):
            out.append((f"{cf}.image", "required field is missing"))
        for key in ("command", "args"):
            items = _list(c.get(key), f"{cf}.{key}", out)
            if any(not isinstance(a, str) for a in items):
                out.append((f"{cf}.{key}", "must be a list of strings"))
        for j, p in enumerate(_list(c.get("ports"), f"{cf}.ports", out)):
            pm = _map(p, f"{cf}.ports[{j}]", out)
            _port(pm.get("containerPort"), f"{cf}.ports[{j}].containerPort", out)
            _protocol(pm.get("protocol"), f"{cf}.ports[{j}].protocol", out)
        for j, e in enumerate(_list(c.get("env"), f"{cf}.env", out)):
            em = _map(e, f"{cf}.env[{j}]", out)
            if not isinstance(em.get("name"), str):
                out.append((f"{cf}.env[{j}].name", "required field is missing"))
            if "value" in em and not isinstance(em["value"], str):
                out.append((f"{cf}.env[{j}].value", "must be a string (quote it)"))
    if "nodeName" in spec and not isinstance(spec["nodeName"], str):
        out.append((f"{field}.nodeName", "must be a string"))


def _pod(obj: dict[str, Any], out: Problems) -> None:
    _pod_spec(obj.get("spec"), "spec", out)


def _workload(obj: dict[str, Any], out: Problems) -> None:
    spec = _map(obj.get("spec"), "spec", out, required=True)
    replicas = spec.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0):
        out.append(("spec.replicas", "must be a non-negative integer"))
    selector = _map(spec.get("selector"), "spec.selector", out, required=True)
    match = _map(selector.get("matchLabels"), "spec.selector.matchLabels", out)
    _str_map(match, "spec.selector.matchLabels", out)
    template = _map(spec.get("template"), "spec.template", out, required=True)
    labels = _map(_map(template.get("metadata"), "spec.template.metadata", out).get("labels"), "", out)
    for k, v in match.items():
        if labels.get(k) != v:
            out.append(("spec.template.metadata.labels", f"does not match spec.selector ({k}={v})"))
            break
    if template:
        _pod_spec(template.get("spec"), "spec.template.spec", out)


def _service(obj: dict[str, Any], out: Problems) -> None:
    spec = _map(obj.get("spec"), "spec", out, required=True)
    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        out.append(("spec.type", f"{kind!r} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"))
    _str_map(spec.get("selector"), "spec.selector", out)
    for i, p in enumerate(_list(spec.get("ports"), "spec.ports", out)):
        pm = _map(p, f"spec.ports[{i}]", out)
        _port(pm.get("port"), f"spec.ports[{i}].port", out)
        if "targetPort" in pm:
            _port(pm["targetPort"], f"spec.ports[{i}].targetPort", out, allow_name=True)
        _protocol(pm.get("protocol"), f"spec.ports[{i}].protocol", out)
    ann = _map(obj.get("metadata"), "metadata", []).get("annotations")
    _algo, err = lbl7.algorithm(ann if isinstance(ann, dict) else {})
    if err:  # the xds service and the datapath would report it too; refuse it before it gets there
        out.append((f"metadata.annotations.{lbl7.ALGORITHM_ANNOTATION}", err.split("; using")[0]))


def _data_map(obj: dict[str, Any], out: Problems) -> None:
    for key in ("data", "stringData"):
        _str_map(obj.get(key), key, out)


def _endpointslice(obj: dict[str, Any], out: Problems) -> None:
    if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        out.append(("addressType", "required: one of IPv4, IPv6, FQDN"))
    for i, e in enumerate(_list(obj.get("endpoints"), "endpoints", out)):
        em = _map(e, f"endpoints[{i}]", out)
        if not _list(em.get("addresses"), f"endpoints[{i}].addresses", out, required=True):
            out.append((f"endpoints[{i}].addresses", "must have at least one address"))


def _netpol(obj: dict[str, Any], out: Problems) -> None:
    spec = _map(obj.get("spec"), "spec", out, required=True)
    _map(spec.get("podSelector"), "spec.podSelector", out, required=True)
    for key in ("ingress", "egress"):
        _list(spec.get(key), f"spec.{key}", out)


def _ingress(obj: dict[str, Any], out: Problems) -> None:
    spec = _map(obj.get("spec"), "spec", out, required=True)
    for i, r in enumerate(_list(spec.get("rules"), "spec.rules", out)):
        http = _map(_map(r, f"spec.rules[{i}]", out).get("http"), f"spec.rules[{i}].http", out)
        for j, p in enumerate(_list(http.get("paths"), f"spec.rules[{i}].http.paths", out)):
            pm = _map(p, f"spec.rules[{i}].http.paths[{j}]", out)
            _map(pm.get("backend"), f"spec.rules[{i}].http.paths[{j}].backend", out, required=True)


_CHECKS: dict[str, Callable[[dict[str, Any], Problems], None]] = {
    "Pod": _pod,
    "Deployment": _workload,
    "ReplicaSet": _workload,
    "Service": _service,
    "Secret": _data_map,
    "ConfigMap": _data_map,
    "EndpointSlice": _endpointslice,
    "NetworkPolicy": _netpol,
    "Ingress": _ingress,
}


def core_problems(obj: dict[str, Any]) -> Problems:
    """(field, reason) for the structural checks of a core kind (none for kinds without checks)."""
    out: Problems = []
    check = _CHECKS.get(str(obj.get("kind")))
    if check is not None:
        check(obj, out)
    return out
