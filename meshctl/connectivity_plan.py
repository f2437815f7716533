"""What ``nodemesh connectivity test`` deploys and checks (pure: no I/O).

Like ``cilium connectivity test``: a throwaway namespace with, on every node, a server (the echo
server), a client and an "other" pod that no policy allows; one ClusterIP Service over the servers; a
Gateway routing to it. Checks run in phases, each with the policy it needs applied first:

1. ``open`` (no policy): pod→pod same node and across nodes, pod→Service by name, DNS, host→pod,
   Gateway;
2. ``l4``: servers accept TCP 8080 from clients only (and from the host, other nodes and the Gateway's
   Envoy), so a client is allowed and an "other" pod is denied — same node and across nodes;
3. ``l7``: clients may only ``GET /public…``: ``/public`` answers 200, ``/private`` 403 from the proxy;
4. ``auth``: clients are allowed only with mutual authentication: the request succeeds and the pair is
   authenticated by the nodes' authd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["NAMESPACE", "PHASES", "Check", "checks", "manifests", "policy"]

NAMESPACE = "nodemesh-connectivity"
PORT = 8080
SERVICE = "echo"
GATEWAY = "connectivity"
PHASES = ("open", "l4", "l7", "auth")
_CNP = "cilium.io/v2"


@dataclass(frozen=True)
class Check:
    """One line of the report. ``kind`` says how the runner performs it:

    ``http``: GET ``path`` from pod ``src`` (``""`` = the host) to ``dst`` (a pod name, or ``svc`` for the
    Service by name, or ``gateway``), expecting HTTP ``status`` (0 = the connection must fail);
    ``dns``: ``src`` resolves the Service's FQDN to its ClusterIP; ``auth``: after an ``http`` check from
    ``src`` to ``dst`` succeeded, the two pods' nodes hold an authenticated entry for them.
    """

    phase: str
    name: str
    kind: str
    src: str
    dst: str
    path: str = "/"
    status: int = 200
    needs_nodes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _meta(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        m["labels"] = labels
    return m


def _pod(name: str, node: str, app: str, server: bool) -> dict[str, Any]:
    if server:
        container: dict[str, Any] = {
            "name": "echo",
            "image": "nodemesh/echo:latest",
            "env": [
                {"name": "PORT", "value": str(PORT)},
                {"name": "SERVICE_NAME", "value": SERVICE},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
            "ports": [{"containerPort": PORT, "protocol": "TCP"}],
            "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
        }
    else:
        # The checks run in the pod's network namespace (as `kubectl exec` would); the pod only holds it.
        container = {"name": "client", "image": "busybox:1.36", "command": ["sleep", "86400"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(name, {"app": app, "nodemesh.io/connectivity": "true"}),
        "spec": {"nodeName": node, "containers": [container], "terminationGracePeriodSeconds": 1},
    }


def server(i: int) -> str:
    return f"server-{i}"


def client(i: int) -> str:
    return f"client-{i}"


def other(i: int) -> str:
    return f"other-{i}"


def manifests(nodes: list[str]) -> list[dict[str, Any]]:
    """The namespace, pods on every node, the Service and the Gateway (namespace first)."""
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    ]
    for i, node in enumerate(nodes, 1):
        objs.append(_pod(server(i), node, "cc-server", True))
        objs.append(_pod(client(i), node, "cc-client", False))
        objs.append(_pod(other(i), node, "cc-other", False))
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(SERVICE),
            "spec": {
                "selector": {"app": "cc-server"},
                "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
            },
        }
    )
    objs.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": _meta(GATEWAY),
            "spec": {
                "gatewayClassName": "nodemesh",
                "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}],
            },
        }
    )
    objs.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _meta(GATEWAY),
            "spec": {
                "parentRefs": [{"name": GATEWAY}],
                "rules": [{"backendRefs": [{"name": SERVICE, "port": 80}]}],
            },
        }
    )
    return objs


def policy(phase: str) -> dict[str, Any] | None:
    """The CiliumNetworkPolicy a phase runs under (None: no policy)."""
    from_clients: dict[str, Any] = {"fromEndpoints": [{"matchLabels": {"app": "cc-client"}}]}
    port: dict[str, Any] = {"ports": [{"port": str(PORT), "protocol": "TCP"}]}
    # The host, the other nodes and the Gateway's Envoy keep reaching the servers in every phase.
    infra = {"fromEntities": ["host", "remote-node", "ingress"]}
    if phase == "open":
        return None
    if phase == "l4":
        rule = {**from_clients, "toPorts": [port]}
    elif phase == "l7":
        rule = {
            **from_clients,
            "toPorts": [{**port, "rules": {"http": [{"method": "GET", "path": "/public.*"}]}}],
        }
    elif phase == "auth":
        rule = {**from_clients, "authentication": {"mode": "required"}, "toPorts": [port]}
    else:
        raise ValueError(f"unknown phase {phase}")
    return {
        "apiVersion": _CNP,
        "kind": "CiliumNetworkPolicy",
        "metadata": _meta("connectivity"),
        "spec": {"endpointSelector": {"matchLabels": {"app": "cc-server"}}, "ingress": [rule, infra]},
    }


def checks(n_nodes: int) -> list[Check]:
    """Every check, in phase order. Across-node checks go from node 1 to node 2."""
    x = 2 if n_nodes > 1 else 1
    out = [
        Check("open", "pod → pod, same node", "http", client(1), server(1)),
        Check("open", "pod → pod, across nodes", "http", client(1), server(x), needs_nodes=2),
        Check("open", "pod → Service by name", "http", client(1), "svc"),
        Check("open", "pod → Service by name, from the other node", "http", client(x), "svc", needs_nodes=2),
        Check("open", "DNS: Service name resolves to its ClusterIP", "dns", client(1), "svc"),
        Check("open", "host → pod", "http", "", server(1)),
        Check("open", "host → Gateway → Service", "http", "", "gateway"),
        Check("l4", "L3/L4 policy allows a selected pod, same node", "http", client(1), server(1)),
        Check(
            "l4",
            "L3/L4 policy allows a selected pod, across nodes",
            "http",
            client(1),
            server(x),
            needs_nodes=2,
        ),
        Check(
            "l4", "L3/L4 policy denies an unselected pod, same node", "http", other(1), server(1), status=0
        ),
        Check(
            "l4",
            "L3/L4 policy denies an unselected pod, across nodes",
            "http",
            other(1),
            server(x),
            status=0,
            needs_nodes=2,
        ),
        Check("l7", "L7 policy allows GET /public, same node", "http", client(1), server(1), "/public"),
        Check(
            "l7",
            "L7 policy refuses GET /private (403), same node",
            "http",
            client(1),
            server(1),
            "/private",
            403,
        ),
        Check(
            "l7",
            "L7 policy allows GET /public, across nodes",
            "http",
            client(1),
            server(x),
            "/public",
            needs_nodes=2,
        ),
        Check(
            "l7",
            "L7 policy refuses GET /private (403), across nodes",
            "http",
            client(1),
            server(x),
            "/private",
            403,
            needs_nodes=2,
        ),
        Check("auth", "mutual auth required: request allowed, same node", "http", client(1), server(1)),
        Check(
            "auth",
            "mutual auth required: request allowed, across nodes",
            "http",
            client(1),
            server(x),
            needs_nodes=2,
        ),
        Check("auth", "mutual auth: the pair is authenticated by authd", "auth", client(1), server(x)),
    ]
    return out
