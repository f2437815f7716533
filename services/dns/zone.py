"""The cluster domain's names, kept from Services, EndpointSlices and Namespaces (pure, in memory).

What it serves follows the Kubernetes DNS specification (the schema CoreDNS' ``kubernetes`` plugin
implements, version 1.1.0), for a cluster domain ``<zone>`` (``cluster.local`` by default):

==============================================  ==============================================================
name                                            records
==============================================  ==============================================================
``<svc>.<ns>.svc.<zone>``                       A/AAAA: the ClusterIPs; headless: every ready endpoint
                                                address; ExternalName: a CNAME to ``spec.externalName``
``<host>.<svc>.<ns>.svc.<zone>``                headless only: A/AAAA of the endpoint (``<host>`` is the
                                                endpoint's ``hostname``, else its address with dashes)
``_<port>._<proto>.<svc>.<ns>.svc.<zone>``      SRV per named port: the Service name (ClusterIP) or each
                                                endpoint's host name (headless), with the port
``<a-b-c-d>.<ns>.pod.<zone>``                   A: the address written in the name (CoreDNS ``pods insecure``)
``<reversed ip>.in-addr.arpa`` / ``ip6.arpa``   PTR: back to the Service (ClusterIP) or endpoint host name
``dns-version.<zone>``                          TXT ``1.1.0`` (the schema version)
``<zone>``                                      SOA and NS ``ns.dns.<zone>`` (whose A/AAAA are kube-dns'
                                                ClusterIPs, as CoreDNS answers)
==============================================  ==============================================================

Names that exist without records of their own (``svc.<zone>``, ``<ns>.svc.<zone>`` for a known
namespace, ``_tcp.<svc>…``) exist for NODATA; every other name in the zone is NXDOMAIN; a name outside
the zone (and a reverse name we hold no PTR for) is for the upstream resolvers.

Each change recomputes the names of the one Service it touches, bumps :attr:`Zone.generation` (the
SOA serial) and adds every name whose answer may differ to :attr:`Zone.changed` (its records, and
names that start or stop existing as parents); the responder drops the cached answers of exactly
those names. A malformed object never raises: what cannot become a record is left out and counted in
:attr:`Zone.rejected`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from services.dns.records import (
    Addr,
    Cname,
    Ns,
    Ptr,
    Record,
    Srv,
    Txt,
    dashed,
    normalize,
    reverse_name,
    valid_name,
)

__all__ = ["SCHEMA_VERSION", "Lookup", "Soa", "Zone"]

SCHEMA_VERSION = "1.1.0"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """``answer``: the name exists (``records`` may be empty: NODATA); ``nxdomain``; ``forward``: not ours.

    ``apex`` is the zone whose SOA goes into a negative answer."""

    status: Literal["answer", "nxdomain", "forward"]
    records: tuple[Record, ...] = ()
    apex: str = ""


@dataclass(frozen=True, slots=True)
class _Port:
    name: str
    port: int
    proto: str  # lower case: tcp, udp, sctp


@dataclass(frozen=True, slots=True)
class _Service:
    ips: tuple[str, ...]
    headless: bool
    external_name: str
    ports: tuple[_Port, ...]
    publish_not_ready: bool


@dataclass(frozen=True, slots=True)
class _Endpoint:
    addresses: tuple[str, ...]
    hostname: str
    ready: bool


@dataclass(frozen=True, slots=True)
class _Slice:
    service: str
    ports: tuple[_Port, ...]
    endpoints: tuple[_Endpoint, ...]


def _ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _ports(raw: Any) -> tuple[_Port, ...]:
    out: list[_Port] = []
    for p in raw if isinstance(raw, list) else []:
        if not isinstance(p, dict):
            continue
        port, name, proto = p.get("port"), p.get("name") or "", p.get("protocol") or "TCP"
        if isinstance(port, int) and 0 < port < 65536 and isinstance(name, str) and isinstance(proto, str):
            out.append(_Port(name.lower(), port, proto.lower()))
    return tuple(out)


def _parse_service(obj: dict[str, Any]) -> _Service | None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "ExternalName":
        ext = spec.get("externalName")
        target = normalize(ext) if isinstance(ext, str) else ""
        return _Service((), False, target if valid_name(target) else "", (), False)
    raw = spec.get("clusterIPs") or [spec.get("clusterIP")]
    raw = raw if isinstance(raw, list) else []
    headless = "None" in raw
    ips = tuple(ip for ip in (_ip(v) for v in raw) if ip is not None)
    not_ready = spec.get("publishNotReadyAddresses") is True
    return _Service(ips, headless, "", _ports(spec.get("ports")), not_ready)


def _parse_slice(obj: dict[str, Any]) -> _Slice | None:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    if not isinstance(service, str) or not service:
        return None
    if obj.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return _Slice(service, (), ())  # FQDN slices carry no addresses to serve
    endpoints: list[_Endpoint] = []
    raw = obj.get("endpoints")
    for ep in raw if isinstance(raw, list) else []:
        if not isinstance(ep, dict):
            continue
        addrs = ep.get("addresses")
        ips = tuple(ip for ip in (_ip(a) for a in (addrs if isinstance(addrs, list) else [])) if ip)
        cond = ep.get("conditions")
        # An unset ready condition means ready (the EndpointSlice API's rule for consumers).
        ready = not isinstance(cond, dict) or cond.get("ready") is not False
        host = ep.get("hostname")
        hostname = host.lower() if isinstance(host, str) and valid_name(host) and "." not in host else ""
        if ips:
            endpoints.append(_Endpoint(ips, hostname, ready))
    return _Slice(service, _ports(obj.get("ports")), tuple(endpoints))


def _srv_rrsets(srvs: dict[str, list[tuple[int, str]]]) -> dict[str, list[Record]]:
    """SRV records per name, weights shared out as CoreDNS does (100 / records at the name)."""
    out: dict[str, list[Record]] = {}
    for name, targets in srvs.items():
        uniq = sorted(set(targets))
        weight = max(1, 100 // len(uniq))
        out[name] = [Srv(0, weight, port, target) for port, target in uniq]
    return out


@dataclass
class Zone:
    """Every name of the cluster domain ``domain``; ``apply_*`` keep it current, :meth:`lookup` reads."""

    domain: str = "cluster.local"
    ttl: int = 5
    generation: int = 0
    synced: bool = False
    rejected: int = 0
    changed: set[str] = field(default_factory=set)
    """Names whose answers may have changed since the reader last emptied this set."""
    _services: dict[Key, _Service] = field(default_factory=dict)
    _slices: dict[Key, _Slice] = field(default_factory=dict)
    _slices_of: dict[Key, set[str]] = field(default_factory=dict)
    _namespaces: set[str] = field(default_factory=set)
    _owned: dict[Key, dict[str, tuple[Record, ...]]] = field(default_factory=dict)
    _index: dict[str, dict[Key, tuple[Record, ...]]] = field(default_factory=dict)
    _ents: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.domain = normalize(self.domain)
        self._svc_suffix = f".svc.{self.domain}"
        self._dns_service = f"kube-dns.kube-system.svc.{self.domain}"

    # --- inputs ---------------------------------------------------------------------------------
    def apply(self, kind: str, deleted: bool, namespace: str, name: str, obj: dict[str, Any]) -> None:
        """One object change from the K8S stream (``obj`` is ignored for a delete)."""
        if kind == "Service":
            self.apply_service(namespace, name, None if deleted else obj)
        elif kind == "EndpointSlice":
            self.apply_slice(namespace, name, None if deleted else obj)
        elif kind == "Namespace":
            self.apply_namespace(name, not deleted)

    def apply_service(self, namespace: str, name: str, obj: dict[str, Any] | None) -> None:
        key = (namespace, name)
        if obj is None:
            self._services.pop(key, None)
        else:
            parsed = _parse_service(obj) if isinstance(obj, dict) else None
            if parsed is None:
                self.rejected += 1
                self._services.pop(key, None)
            else:
                self._services[key] = parsed
        self._rebuild(key)

    def apply_slice(self, namespace: str, name: str, obj: dict[str, Any] | None) -> None:
        key = (namespace, name)
        old = self._slices.pop(key, None)
        if old is not None:
            self._slices_of.get((namespace, old.service), set()).discard(name)
        new = _parse_slice(obj) if isinstance(obj, dict) else None
        if obj is not None and new is None:
            self.rejected += 1
        if new is not None:
            self._slices[key] = new
            self._slices_of.setdefault((namespace, new.service), set()).add(name)
        for svc in {s.service for s in (old, new) if s is not None}:
            self._rebuild((namespace, svc))

    def apply_namespace(self, name: str, exists: bool) -> None:
        before = name in self._namespaces
        if exists:
            self._namespaces.add(name)
        else:
            self._namespaces.discard(name)
        if before != exists:
            self.generation += 1
            self.changed.update((f"{name}{self._svc_suffix}", f"{name}.pod.{self.domain}"))

    # --- queries --------------------------------------------------------------------------------
    @property
    def names(self) -> int:
        """How many names hold records (for the metrics)."""
        return len(self._index)

    def soa(self, apex: str) -> Soa:
        return Soa(
            mname=f"ns.dns.{self.domain}",
            rname=f"hostmaster.{self.domain}",
            serial=self.generation % (1 << 32),
            refresh=7200,
            retry=1800,
            expire=86400,
            minimum=self.ttl,
        )

    def lookup(self, qname: str) -> Lookup:
        """What the zone holds at ``qname`` (any case, trailing dot or not)."""
        name = normalize(qname)
        domain = self.domain
        if name != domain and not name.endswith("." + domain):
            held = self._index.get(name)
            if held:
                apex = next((z for z in _REVERSE_ZONES if name.endswith("." + z)), domain)
                return Lookup("answer", self._merge(held), apex)
            return Lookup("forward")
        rel = name[: -len(domain)].rstrip(".")
        labels = rel.split(".") if rel else []
        if not labels:
            return Lookup("answer", (Ns(f"ns.dns.{domain}"),), domain)
        tail, depth = labels[-1], len(labels)
        if tail == "svc":
            if depth == 1 or self._ents[name] > 0 or (depth == 2 and labels[0] in self._namespaces):
                return Lookup("answer", self._merge(self._index.get(name, {})), domain)
            held = self._index.get(name)
            return Lookup("answer", self._merge(held), domain) if held else Lookup("nxdomain", (), domain)
        if tail == "pod":
            if depth == 1 or (depth == 2 and self._namespace_known(labels[0])):
                return Lookup("answer", (), domain)
            if depth == 3:
                ip = _ip(labels[0].replace("-", ".")) if labels[0].count("-") == 3 else None
                if ip is not None:
                    return Lookup("answer", (Addr(ip),), domain)
            return Lookup("nxdomain", (), domain)
        if labels == ["dns-version"]:
            return Lookup("answer", (Txt(SCHEMA_VERSION),), domain)
        if labels == ["dns"]:
            return Lookup("answer", (), domain)
        if labels == ["ns", "dns"]:
            own = self._merge(self._index.get(self._dns_service, {}))
            return Lookup("answer", tuple(r for r in own if isinstance(r, Addr)), domain)
        return Lookup("nxdomain", (), domain)

    def _namespace_known(self, ns: str) -> bool:
        return ns in self._namespaces or self._ents[f"{ns}{self._svc_suffix}"] > 0

    @staticmethod
    def _merge(held: dict[Key, tuple[Record, ...]]) -> tuple[Record, ...]:
        if len(held) == 1:
            return next(iter(held.values()))
        seen: dict[Record, None] = {}
        for key in sorted(held):
            for r in held[key]:
                seen[r] = None
        return tuple(seen)

    # --- building -------------------------------------------------------------------------------
    def _records(self, key: Key) -> dict[str, tuple[Record, ...]]:
        svc = self._services.get(key)
        if svc is None:
            return {}
        ns, name = key
        base = normalize(f"{name}.{ns}.svc.{self.domain}")
        if not valid_name(base):
            self.rejected += 1
            return {}
        out: dict[str, list[Record]] = {}
        srvs: dict[str, list[tuple[int, str]]] = {}
        if svc.external_name:
            out[base] = [Cname(svc.external_name)]
        elif not svc.headless:
            out[base] = [Addr(ip) for ip in svc.ips]
            for p in svc.ports:
                if p.name:
                    srvs.setdefault(f"_{p.name}._{p.proto}.{base}", []).append((p.port, base))
            for ip in svc.ips:
                out.setdefault(reverse_name(ip), []).append(Ptr(base))
        else:
            addrs: dict[str, None] = {}
            for slice_name in sorted(self._slices_of.get(key, ())):
                sl = self._slices[(ns, slice_name)]
                for ep in sl.endpoints:
                    if not (ep.ready or svc.publish_not_ready):
                        continue
                    for ip in ep.addresses:
                        addrs[ip] = None
                        host = f"{ep.hostname or dashed(ip)}.{base}"
                        if not valid_name(host):
                            continue
                        hrecs = out.setdefault(host, [])
                        if Addr(ip) not in hrecs:
                            hrecs.append(Addr(ip))
                        ptrs = out.setdefault(reverse_name(ip), [])
                        if Ptr(host) not in ptrs:
                            ptrs.append(Ptr(host))
                        for p in sl.ports:
                            if p.name:
                                srvs.setdefault(f"_{p.name}._{p.proto}.{base}", []).append((p.port, host))
            out.setdefault(base, []).extend(Addr(ip) for ip in addrs)
        for srv_name, recs in _srv_rrsets(srvs).items():
            if valid_name(srv_name):
                out[srv_name] = recs
        return {n: tuple(r) for n, r in out.items()}

    def _rebuild(self, key: Key) -> None:
        new = self._records(key)
        old = self._owned.get(key, {})
        if new == old:
            return
        for n in old:
            held = self._index.get(n)
            if held is not None:
                held.pop(key, None)
                if not held:
                    del self._index[n]
            self._count_ancestors(n, -1)
        for n, recs in new.items():
            self._index.setdefault(n, {})[key] = recs
            self._count_ancestors(n, +1)
        if new:
            self._owned[key] = new
        else:
            self._owned.pop(key, None)
        self.generation += 1
        self.changed.update(old)
        self.changed.update(new)
        if key == ("kube-system", "kube-dns"):
            self.changed.add(f"ns.dns.{self.domain}")  # answered with kube-dns' addresses

    def _count_ancestors(self, name: str, delta: int) -> None:
        """Keep the names between ``name`` and ``svc.<zone>`` existing (empty non-terminals)."""
        stop = self._svc_suffix[1:]
        if not name.endswith(self._svc_suffix):
            return
        cur = name
        while True:
            cur = cur.partition(".")[2]
            if cur == stop or not cur:
                return
            self._ents[cur] += delta
            count = self._ents[cur]
            if count <= 0:
                del self._ents[cur]
            if count <= 0 or count == delta == 1:  # stopped or started existing
                self.changed.add(cur)
                ns, _, rest = cur.partition(".")
                if rest == stop:  # <ns>.pod.<zone> exists while <ns>.svc.<zone> does
                    self.changed.add(f"{ns}.pod.{self.domain}")
