"""Kubernetes Services on this node: the socket load-balancer's state, fed by the agent.

:class:`ServiceLB` keeps one :class:`~services.datapath.lb.plan.ServicePlan` per Service, derived
from the K8S cache (Services, EndpointSlices) and the nodes' addresses (NodePorts). A change to a
Service or one of its EndpointSlices re-plans that Service only and writes the diff of its own
frontends (``lb/diff.py`` orders the writes); a node address change re-plans every Service. Before
the agent's initial sync nothing is written — the maps pinned by the previous run keep serving —
then one full diff against what the maps hold brings them to the cluster's state.

It also tells the programs which sockets are this node's: each pod's network namespace cookie (and
the host's, with ``lb_host_sockets``) goes into ``nm_lb_netns``. See docs/services.md.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nodemesh import lbl7
from nodemesh.messages.identity import NodeInfo
from nodemesh.messages.k8s import ObjectEvent
from services.datapath.config import DatapathConfig
from services.datapath.lb.attribution import BackendServices
from services.datapath.lb.diff import LbState, Op, diff, nodeports_of
from services.datapath.lb.listing import write_names
from services.datapath.lb.loader import SockLoader
from services.datapath.lb.maps import NS_HOST, NS_POD, LbMaps
from services.datapath.lb.model import F_NODE_PORT, Frontend, FrontendPlan, ServiceRef
from services.datapath.lb.plan import SERVICE_NAME_LABEL, PlanContext, ServicePlan, plan_service
from services.datapath.pods.netns import netns_socket

__all__ = ["LB_KINDS", "ServiceLB", "netns_cookie"]

log = logging.getLogger("nodemesh.datapath.services")
LB_KINDS = ("Service", "EndpointSlice")
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14+)
SvcKey = tuple[str, str]


def netns_cookie(netns: str = "") -> int:
    """The kernel's cookie of a network namespace (``netns`` under /run/netns; "" = our own), as
    ``bpf_get_netns_cookie`` returns it for the sockets inside."""
    s = netns_socket(netns) if netns else socket.socket()
    try:
        return int(struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])
    finally:
        s.close()


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    m = (obj or {}).get("metadata")
    return m if isinstance(m, dict) else {}


def _service_of(es: dict[str, Any] | None) -> str:
    """The Service an EndpointSlice belongs to (its ``kubernetes.io/service-name`` label)."""
    labels = _meta(es).get("labels")
    svc = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return svc if isinstance(svc, str) else ""


class ServiceLB:
    def __init__(self, cfg: DatapathConfig, pin_dir: str, registry: CollectorRegistry) -> None:
        self.node = cfg.node
        self.node_dir = cfg.data_dir  # where service list finds the names of the frontends
        self.host_sockets = cfg.lb_host_sockets
        self.loader = SockLoader(pin_dir, cgroup_root=cfg.cgroup_root)
        self.maps: LbMaps | None = None
        self.state = LbState()
        self.k8s: Any = None  # the agent's K8sCache
        self.synced = False
        self.node_addrs: dict[str, str] = {}
        self.plans: dict[SvcKey, ServicePlan] = {}
        self.slices: dict[SvcKey, dict[str, dict[str, Any]]] = {}  # Service → its EndpointSlices by name
        self.claims: dict[Frontend, set[SvcKey]] = {}  # who asks for a frontend (first one gets it)
        self.desired: dict[Frontend, FrontendPlan] = {}
        self.pod_cookies: dict[str, int] = {}  # pod key → netns cookie
        self.host_cookie = 0
        self.by_backend = BackendServices()  # flows: which Service a backend address serves
        self.names: dict[Frontend, tuple[int, ServiceRef]] = {}  # what NAMES_FILE holds
        self._errors: dict[SvcKey, list[str]] = {}
        # lb-l7 (nodemesh.lbl7): this node's pod CIDR (router IP = its Envoy) and the listener ports,
        # assigned from every lb-l7 Service's claims exactly as xds assigns them
        self.pod_cidr = cfg.pod_cidr
        self.l7_claims: dict[SvcKey, list[lbl7.Claim]] = {}
        self.l7_ports: dict[lbl7.PortKey, int] = {}
        self.services = Gauge(
            "nodemesh_lb_services", "Services load-balanced on this node", registry=registry
        )
        self.frontends = Gauge("nodemesh_lb_frontends", "Frontends (address:port/proto) in the map",
                               registry=registry)  # fmt: skip
        self.backends = Gauge("nodemesh_lb_backends", "Backends in the map", registry=registry)
        self.update_seconds = Histogram(
            "nodemesh_lb_map_update_seconds",
            "Time to plan and write into the maps: one Service's change (trigger=service: a Service, its "
            "EndpointSlices, node addresses) or every Service (trigger=sync: the agent's initial sync)",
            ["trigger"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        registry.register(_StatsCollector(self.loader))

    # --- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        """Compile, open the pinned maps, read what they hold, attach (in place of a previous run's
        programs). Blocking: run it in a thread."""
        self.maps = self.loader.load()
        self.state = self.maps.read_state()
        self.loader.attach()
        log.info(
            "socket load-balancer loaded",
            extra={"reused_pins": self.loader.reused_pins, "frontends": len(self.state.svc)},
        )

    def close(self) -> None:
        """Agent stop: programs stay attached, maps pinned (Services keep working)."""
        self.loader.close()
        self.maps = None

    # --- which sockets are ours ---------------------------------------------------------------
    def set_host_sockets(self) -> None:
        assert self.maps is not None
        self.host_cookie = netns_cookie()
        if self.host_sockets:
            self.maps.set_netns(self.host_cookie, NS_HOST)
        else:
            self.maps.del_netns(self.host_cookie)

    def pod_added(self, key: str, netns: str) -> None:
        """Before the pod's workload starts: its sockets are this node's from the first one."""
        assert self.maps is not None
        cookie = netns_cookie(netns)
        old = self.pod_cookies.get(key)
        if old is not None and old != cookie:
            self.maps.del_netns(old)
        self.pod_cookies[key] = cookie
        self.maps.set_netns(cookie, NS_POD)

    def pod_removed(self, key: str) -> None:
        cookie = self.pod_cookies.pop(key, None)
        if cookie is not None and self.maps is not None:
            self.maps.del_netns(cookie)

    def sweep_pods(self, live: Iterable[str]) -> None:
        """Forget namespaces of pods that went while the agent was down."""
        assert self.maps is not None
        keep = {self.pod_cookies[k] for k in live if k in self.pod_cookies}
        if self.host_sockets and self.host_cookie:
            keep.add(self.host_cookie)
        for cookie, _kind in list(self.maps.netns_items()):
            if cookie not in keep:
                self.maps.del_netns(cookie)

    # --- inputs -------------------------------------------------------------------------------
    def on_k8s(self, ev: ObjectEvent, prev: dict[str, Any] | None) -> None:
        if ev.kind not in LB_KINDS:
            return
        keys = {(ev.namespace, ev.name)}
        if ev.kind == "Service":  # an lb-l7 change may move other Services' listener ports
            claims = [] if ev.type == "delete" else lbl7.claims(ev.obj)
            if claims != self.l7_claims.get((ev.namespace, ev.name), []):
                if claims:
                    self.l7_claims[(ev.namespace, ev.name)] = claims
                else:
                    self.l7_claims.pop((ev.namespace, ev.name), None)
                keys |= self._reassign_l7()
        if ev.kind == "EndpointSlice":  # a slice may move between Services (label change): both
            old, new = _service_of(prev), "" if ev.type == "delete" else _service_of(ev.obj)
            if old:
                self.slices.get((ev.namespace, old), {}).pop(ev.name, None)
            if new:
                self.slices.setdefault((ev.namespace, new), {})[ev.name] = ev.obj
            keys = {(ev.namespace, n) for n in (old, new) if n}
        if keys and self.synced:
            self.update(keys)

    def on_node(self, key: str, info: NodeInfo | None, old: NodeInfo | None) -> None:
        if info is not None and info.name == self.node and info.pod_cidr and not self.pod_cidr:
            self.pod_cidr = info.pod_cidr  # lb-l7 frontends go to the router IP of this CIDR
            if self.synced:
                self.update(set(self.l7_claims))
        addr = info.address if info is not None else ""
        name = info.name if info is not None else (old.name if old is not None else key)
        if self.node_addrs.get(name, "") == addr:
            return
        if addr:
            self.node_addrs[name] = addr
        else:
            self.node_addrs.pop(name, None)
        if self.synced:  # NodePort frontends follow the node addresses
            had = {
                k
                for k, p in self.plans.items()
                if any(fp.type_flag == F_NODE_PORT for fp in p.frontends.values())
            }
            self.update(had | {k for k in self._service_keys() if self._has_node_port(k)})

    # --- planning -----------------------------------------------------------------------------
    def _ctx(self) -> PlanContext:
        return PlanContext(
            node=self.node,
            node_addresses=dict(self.node_addrs),
            pod_cidr=self.pod_cidr,
            l7_ports=self.l7_ports,
        )

    def _reassign_l7(self) -> set[SvcKey]:
        """Listener ports from the current claims; returns the Services whose ports changed."""
        new = lbl7.assign(c for cs in self.l7_claims.values() for c in cs)
        for msg in new.notes + new.errors:
            log.warning("%s", msg)
        changed = {(k.namespace, k.name) for k in set(new.ports) | set(self.l7_ports)
                   if new.ports.get(k) != self.l7_ports.get(k)}  # fmt: skip
        self.l7_ports = new.ports
        return changed

    def _service_keys(self) -> list[SvcKey]:
        return [(str(_meta(s).get("namespace") or "default"), str(_meta(s).get("name") or ""))
                for s in self.k8s.list("Service")]  # fmt: skip

    def _has_node_port(self, key: SvcKey) -> bool:
        svc = self.k8s.get("Service", *key)
        spec = (svc or {}).get("spec")
        return isinstance(spec, dict) and spec.get("type") in ("NodePort", "LoadBalancer")

    def _plan(self, key: SvcKey, ctx: PlanContext) -> ServicePlan:
        svc = self.k8s.get("Service", *key)
        if svc is None:
            return ServicePlan()
        sp = plan_service(svc, list(self.slices.get(key, {}).values()), ctx)
        if sp.errors and sp.errors != self._errors.get(key):
            log.warning("service %s/%s: %s", key[0], key[1], "; ".join(sp.errors))
        self._errors[key] = sp.errors
        return sp

    def _replan(self, keys: Iterable[SvcKey], ctx: PlanContext) -> set[Frontend]:
        """Re-plan ``keys``; returns the frontends whose owner or plan may have changed."""
        touched: set[Frontend] = set()
        for key in keys:
            old = self.plans.pop(key, None)
            if old is not None:
                for fe in old.frontends:
                    self.claims.get(fe, set()).discard(key)
                touched |= set(old.frontends)
            sp = self._plan(key, ctx)
            if sp.frontends:
                self.plans[key] = sp
                for fe in sp.frontends:
                    self.claims.setdefault(fe, set()).add(key)
                touched |= set(sp.frontends)
            elif not sp.errors:
                self._errors.pop(key, None)
        for fe in touched:
            owners = self.claims.get(fe)
            old_plan = self.desired.get(fe)
            if owners:
                first = min(owners)
                self.desired[fe] = self.plans[first].frontends[fe]
                self.by_backend.set(fe, old_plan, self.desired[fe])
                if len(owners) > 1:
                    log.warning("frontend %s claimed by %s; %s/%s keeps it", fe, sorted(owners), *first)
            else:
                self.claims.pop(fe, None)
                self.desired.pop(fe, None)
                self.by_backend.set(fe, old_plan, None)
        return touched

    def sync(self) -> None:
        """After the agent's initial sync: plan every Service and write one full diff against what
        the pinned maps hold (a restart rewrites only what changed meanwhile)."""
        t0 = time.perf_counter()
        self.plans.clear()
        self.claims.clear()
        self.desired.clear()
        self.by_backend = BackendServices()
        self.slices.clear()
        for es in self.k8s.list("EndpointSlice"):
            if svc := _service_of(es):
                ns = str(_meta(es).get("namespace") or "default")
                self.slices.setdefault((ns, svc), {})[str(_meta(es).get("name") or "")] = es
        self.l7_claims = {}
        for svc in self.k8s.list("Service"):
            if claims := lbl7.claims(svc):
                self.l7_claims[(claims[0].key.namespace, claims[0].key.name)] = claims
        self._reassign_l7()
        touched = self._replan(self._service_keys(), self._ctx())
        self._write(diff(self.state, self.desired, nodeports=nodeports_of(self.desired)))
        self._record_names(touched | set(self.names))
        self.synced = True
        self.update_seconds.labels("sync").observe(time.perf_counter() - t0)
        log.info(
            "services synced", extra={"frontends": len(self.desired), "backends": len(self.state.backends)}
        )

    def update(self, keys: set[SvcKey]) -> list[Op]:
        """Re-plan some Services and write the diff of their frontends only."""
        t0 = time.perf_counter()
        touched = self._replan(keys, self._ctx())
        np_changed = any(self._is_node_port(fe) for fe in touched)
        ops = diff(self.state, self.desired, only=touched,
                   nodeports=nodeports_of(self.desired) if np_changed else None)  # fmt: skip
        self._write(ops)
        self._record_names(touched)
        self.update_seconds.labels("service").observe(time.perf_counter() - t0)
        return ops

    def service_of(self, ip: str, port: int, proto: int) -> tuple[str, str] | None:
        """(namespace, name) of the Service whose backend ``ip:port/proto`` is (flows)."""
        return self.by_backend.lookup(ip, port, proto)

    def _record_names(self, frontends: Iterable[Frontend]) -> None:
        """Rewrite NAMES_FILE if a frontend's rev-NAT id or Service changed (rare: backend churn
        changes neither, so the file is not rewritten per EndpointSlice update)."""
        changed = False
        for fe in frontends:
            fp, rid = self.desired.get(fe), self.state.rev_of.get(fe)
            new = (rid, fp.service) if fp is not None and rid is not None else None
            if new != self.names.get(fe):
                changed = True
                if new is None:
                    self.names.pop(fe, None)
                else:
                    self.names[fe] = new
        if changed:
            try:
                write_names(self.node_dir, self.names)
            except OSError as e:  # listing loses names; the datapath itself is unaffected
                log.warning("cannot record service names in %s: %s", self.node_dir, e)

    def _is_node_port(self, fe: Frontend) -> bool:
        fp = self.desired.get(fe)
        cur = self.state.svc.get(fe)
        was = cur is not None and cur.zero is not None and bool(cur.zero.flags & F_NODE_PORT)
        return was or (fp is not None and fp.type_flag == F_NODE_PORT)

    def _write(self, ops: list[Op]) -> None:
        assert self.maps is not None
        for op in ops:
            self.maps.write(op)  # kernel first: the mirror never claims what is not there
            self.state.apply(op)
        self.services.set(len(self.plans))
        self.frontends.set(len(self.desired))
        self.backends.set(len(self.state.backends))


class _StatsCollector(Collector):
    """The programs' per-CPU counters as ``nodemesh_lb_socket_events_total{event}``."""

    def __init__(self, loader: SockLoader) -> None:
        self.loader = loader

    def collect(self) -> Iterable[CounterMetricFamily]:
        c = CounterMetricFamily(
            "nodemesh_lb_socket_events",
            "Socket load-balancer decisions: translated, no_backend (refused), reverse (reply/peer "
            "rewritten), affinity (backend from session affinity), inconsistent, bind_denied",
            labels=["event"],
        )
        for name, v in self.loader.stats().items():
            c.add_metric([name], v)
        yield c
