"""Service, EndpointSlice and Namespace objects as the watcher publishes them (tests/dns, bench/dns)."""

from __future__ import annotations

from typing import Any


def service(
    name: str,
    ns: str = "demo",
    ip: str | None = "10.96.0.20",
    ports: list[tuple[str, int, str]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Service; ``ip=None`` makes it headless; ``ports``: (name, port, protocol)."""
    body: dict[str, Any] = {"type": "ClusterIP", "clusterIP": ip or "None", **spec}
    if ip:
        body.setdefault("clusterIPs", [ip])
    body["ports"] = [{"name": n, "port": p, "protocol": proto} for n, p, proto in (ports or [])]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": body}


def endpoint(ip: str, ready: bool | None = True, hostname: str = "") -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        ep["conditions"] = {"ready": ready, "serving": ready, "terminating": False}
    if hostname:
        ep["hostname"] = hostname
    return ep


def endpoint_slice(
    name: str,
    svc: str,
    endpoints: list[dict[str, Any]],
    ns: str = "demo",
    ports: list[tuple[str, int, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv6" if endpoints and ":" in endpoints[0]["addresses"][0] else "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in (ports or [])],
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
