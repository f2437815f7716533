"""The neutral model between ingestion and Envoy translation (Cilium's operator/pkg/model, reshaped).

Ingestion (Gateway API, Ingress, annotated Services) produces :class:`Model`; ``envoy_*`` turns it
into resources. The model is keyed the way Envoy needs it: one :class:`ListenerModel` per
address:port, holding a plain-HTTP route table, TLS-terminating chains (each with its own route
table), passthrough chains by SNI and an optional TCP chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INVALID_BACKEND",
    "Backend",
    "HeaderFilter",
    "ListenerModel",
    "Match",
    "Mirror",
    "Model",
    "PassthroughChain",
    "Redirect",
    "Rewrite",
    "Route",
    "RouteTable",
    "TLSChain",
]


# A cluster name that never exists: Envoy answers ``cluster_not_found_response_code`` (500) for it.
INVALID_BACKEND = "nodemesh/invalid-backend"


@dataclass
class HeaderFilter:
    add: list[tuple[str, str]] = field(default_factory=list)
    set: list[tuple[str, str]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.add or self.set or self.remove)


@dataclass
class Backend:
    """A resolved backend: a Service port. ``cluster`` is Cilium's ``<ns>:<svc>:<port>``."""

    namespace: str
    service: str
    port: int
    weight: int = 1
    h2: bool = False
    request_headers: HeaderFilter | None = None
    response_headers: HeaderFilter | None = None
    # The BackendTLSPolicy (backendtls.BackendTLS) that applies to this Service port, if any.
    tls: Any = None
    # An unresolvable backendRef keeping its share of the weight: requests sent to it get 500.
    invalid: bool = False

    @property
    def cluster(self) -> str:
        if self.invalid:
            return INVALID_BACKEND
        return f"{self.namespace}:{self.service}:{self.port}"

    @property
    def eds_name(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass
class Match:
    path_type: str = "prefix"  # exact | prefix | regex
    path: str = "/"
    # (name, "exact"|"regex", value)
    headers: list[tuple[str, str, str]] = field(default_factory=list)
    query: list[tuple[str, str, str]] = field(default_factory=list)
    method: str = ""
    # Ingress wildcard hosts match exactly one label: an extra :authority regex (research §5.3).
    authority_regex: str = ""


@dataclass
class Redirect:
    scheme: str = ""
    hostname: str = ""
    port: int | None = None
    path_type: str = ""  # "" | full | prefix
    path: str = ""
    status_code: int = 302
    https: bool = False  # Ingress force-https


@dataclass
class Rewrite:
    hostname: str = ""
    path_type: str = ""  # "" | full | prefix
    path: str = ""


@dataclass
class Mirror:
    backend: Backend
    per_million: int = 1_000_000


@dataclass
class Route:
    match: Match
    backends: list[Backend] = field(default_factory=list)
    direct_status: int = 0  # non-zero: answer with this status (500 for unresolvable backends)
    request_headers: HeaderFilter | None = None
    response_headers: HeaderFilter | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: list[Mirror] = field(default_factory=list)
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    retry: Retry | None = None
    cors: Cors | None = None
    # Precedence tiebreakers across routes (Gateway API): older route, then ns/name, then rule order.
    created: str = ""
    source: str = ""
    rule_index: int = 0
    match_index: int = 0


@dataclass
class Retry:
    """HTTPRoute rule ``retry`` (GEP-1731): retry on these status codes (and connection failures)."""

    codes: list[int] = field(default_factory=list)
    attempts: int = 1
    backoff_s: float | None = None


@dataclass
class Cors:
    """The HTTPRoute ``CORS`` filter (GEP-1767). Origins keep their ``*`` wildcards."""

    allow_origins: list[str] = field(default_factory=list)
    allow_methods: list[str] = field(default_factory=list)
    allow_headers: list[str] = field(default_factory=list)
    expose_headers: list[str] = field(default_factory=list)
    allow_credentials: bool = False
    max_age_s: int = 5


@dataclass
class RouteTable:
    """One RouteConfiguration: virtual hosts by hostname ("*" = any)."""

    name: str
    port: int
    vhosts: dict[str, list[Route]] = field(default_factory=dict)

    def add(self, hostname: str, route: Route) -> None:
        self.vhosts.setdefault(hostname, []).append(route)


@dataclass
class TLSChain:
    """An HTTPS filter chain: SNI names (empty = any), SDS secret names, and its route table."""

    server_names: list[str]
    secrets: list[str]
    routes: RouteTable
    # frontend_tls.ClientValidation: the client certificates this chain verifies (None = none asked).
    client_validation: Any = None
    # A TLS listener in Terminate mode (TLSRoute): the decrypted stream goes to these backends by TCP
    # proxy instead of an HTTP route table (None = an HTTPS chain).
    tcp: list[Backend] | None = None


@dataclass
class PassthroughChain:
    server_names: list[str]  # empty = any SNI
    backends: list[Backend]
    name: str = ""


@dataclass
class ListenerModel:
    name: str
    address: str
    port: int
    http: RouteTable | None = None
    tls: list[TLSChain] = field(default_factory=list)
    passthrough: list[PassthroughChain] = field(default_factory=list)
    tcp: list[Backend] | None = None
    sources: list[str] = field(default_factory=list)  # "<Kind>/<ns>/<name>" that contributed
    freebind: bool = False
    service: str = ""  # "<ns>/<name>" of an lb-l7 Service: its access log names it (L7 flows)


@dataclass
class Model:
    listeners: dict[str, ListenerModel] = field(default_factory=dict)  # key "address:port"
    # node → listeners only that node's Envoy serves (lb-l7 on the node's router IP)
    node_listeners: dict[str, list[ListenerModel]] = field(default_factory=dict)
    # Secrets to serve over SDS: SDS name → (namespace, name) of the Kubernetes Secret.
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Every backend some route uses (clusters and endpoints are made for them).
    backends: dict[str, Backend] = field(default_factory=dict)
    # cluster name → lb algorithm (round_robin | least_request | random), from Service annotations.
    lb_policy: dict[str, str] = field(default_factory=dict)
    # (namespace, service) → Gateways whose routes use it (BackendTLSPolicy ancestors).
    gateways_of: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def listener(self, name: str, address: str, port: int) -> ListenerModel:
        key = f"{address}:{port}"
        lst = self.listeners.get(key)
        if lst is None:
            lst = self.listeners[key] = ListenerModel(name=name, address=address, port=port)
        return lst

    def use(self, backend: Backend) -> None:
        if backend.invalid:
            return
        prev = self.backends.get(backend.cluster)
        if prev is None:
            self.backends[backend.cluster] = Backend(
                backend.namespace, backend.service, backend.port, h2=backend.h2, tls=backend.tls
            )
        elif backend.h2:
            prev.h2 = True
