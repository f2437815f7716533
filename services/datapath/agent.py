"""The datapath agent's state: what the cluster says (pods, policies, identities, ipcache, nodes,
auth verdicts) turned into map writes, pod plumbing and status — no NATS subscriptions here.

``app.py`` feeds it; it publishes through the :class:`~nodemesh.bus.Bus` it is given. Every handler
is idempotent and takes the full new value, so replays after a restart converge to the same maps.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodemesh import kinds, subjects
from nodemesh.bus import Bus
from nodemesh.labels import RESERVED
from nodemesh.messages.auth import AuthKey as AuthKeyMsg
from nodemesh.messages.auth import AuthVerdict
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from nodemesh.messages.k8s import ObjectEvent, StatusPatch
from nodemesh.policy.incremental import Changes, PolicyEngine
from nodemesh.policy.model import Endpoint, EndpointPolicy, PolicyRef
from nodemesh.policy.visibility import Visibility, pod_visibility, with_visibility
from nodemesh.streams import BUCKET_AUTH, IDENTITY_KEY_PREFIX
from services.datapath import authgate, conntrack
from services.datapath.config import DatapathConfig
from services.datapath.endpoints import PolicyWriter
from services.datapath.loader import Loader
from services.datapath.maps import AuthKey, IPCacheValue, NodeMaps, ip_to_be32
from services.datapath.nodeids import NodeIds
from services.datapath.pods.ipam import Ipam
from services.datapath.pods.manager import PodEndpoint, PodManager, on_node
from services.datapath.pods.resolvconf import PodDns

__all__ = ["POLICY_KINDS", "Agent", "pod_identity_labels", "router_ip"]

log = logging.getLogger("nodemesh.datapath")
POLICY_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy")
ID_HOST, ID_REMOTE_NODE = 1, 6


def router_ip(pod_cidr: str) -> str:
    """The node's router IP: the first address of its pod CIDR (IPAM never hands it out)."""
    try:
        return str(next(ipaddress.IPv4Network(pod_cidr, strict=False).hosts()))
    except (ValueError, StopIteration):
        return ""


def pod_identity_labels(
    pod: dict[str, Any], namespace: dict[str, Any] | None, cluster: str
) -> tuple[str, ...]:
    """The pod's identity labels, exactly as the identity service derives them."""
    from nodemesh.labels import pod_labels

    try:
        return tuple(pod_labels(pod, namespace, cluster))
    except ValueError:  # labels the identity service would refuse: select by namespace only
        ns = str((pod.get("metadata") or {}).get("namespace") or "default")
        return (f"k8s:io.kubernetes.pod.namespace={ns}",)


class Agent:
    def __init__(self, cfg: DatapathConfig, bus: Bus, loader: Loader) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.bus = bus
        self.loader = loader
        self.data = Path(cfg.data_dir)
        self.maps: NodeMaps | None = None
        self.writer: PolicyWriter | None = None
        self.engine = PolicyEngine()
        self.node_ids = NodeIds(self.data / "nodeids.json", self.node)
        self.scope = loader.scope
        self.pods: PodManager | None = None
        # Kubernetes mode (--local-mode false): the endpoints the CNI plugin reported (cni/handler.py)
        self.cni_endpoints: dict[str, PodEndpoint] = {}
        self.pod_cidr = cfg.pod_cidr
        self.node_ip = cfg.node_ip
        self.ipcache: dict[str, IPCacheEntry] = {}  # ip → entry (flow enrichment, pod identities)
        self.labels: dict[int, list[str]] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.k8s: Any = None  # K8sCache, set by app
        self.lb: Any = None  # services.ServiceLB (socket load-balancing), set by app
        self.synced = False
        self._policy_status: dict[PolicyRef, tuple[str, ...]] = {}
        self._visibility: dict[str, tuple[Visibility, ...]] = {}  # endpoint key → what is written
        self._dirty = asyncio.Event()
        self.apply_seconds: list[float] = []
        self._parse_errors: dict[PolicyRef, tuple[str, ...]] = {}
        self._closed_refs: dict[PolicyRef, set[str]] = {}  # policy → endpoints failing closed under it
        self.ct_lifetimes = conntrack.CtLifetimes(
            tcp=cfg.ct_lifetime_tcp,
            tcp_syn=cfg.ct_lifetime_tcp_syn,
            tcp_fin=cfg.ct_lifetime_tcp_fin,
            any=cfg.ct_lifetime_any,
        )
        self.ct_gc_runs = 0
        self.ct_gc_deleted = 0
        self.auth_gate_waits: list[float] = []  # seconds new pods waited for identity + auth verdicts
        self.auth_gate_timeouts = 0  # pods that started without them
        self._needs: dict[str, tuple[Any, set[authgate.Need]]] = {}  # pod → (inputs' generation, needs)
        self._applies = 0  # engine results written (a generation of the policy state)
        self.version = 0  # bumped when ipcache or identity labels change (flow enrichment cache)

    # --- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        self.maps = self.loader.load()
        self.writer = PolicyWriter(self.maps)

    def _ensure_pods(self) -> PodManager | None:
        if self.pods is None and self.pod_cidr:
            ipam = Ipam(self.data / "ipam.json", self.pod_cidr)
            self.pods = PodManager(
                self.node,
                ipam,
                self.data / "pods",
                on_added=self._ep_added,
                on_removed=self._ep_removed,
                report=self._report_pod,
                run_containers=self.cfg.local_mode,
                scope=self.scope,
                host_src=router_ip(self.pod_cidr) if self.cfg.local_mode else "",
                dns=PodDns(self.cfg.cluster_dns, self.cfg.cluster_domain),
                gate=self.auth_gate if self.cfg.auth_gate_timeout > 0 else None,
            )
        return self.pods

    async def reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; retrying")
                await asyncio.sleep(1)
                self._dirty.set()

    def mark_dirty(self) -> None:
        self._dirty.set()

    def endpoints(self) -> dict[str, PodEndpoint]:
        """Every endpoint of this node, by ``namespace/name``."""
        if not self.cni_endpoints:
            return self.pods.endpoints if self.pods else {}
        return {**(self.pods.endpoints if self.pods else {}), **self.cni_endpoints}

    async def reconcile(self) -> None:
        """Make this node's endpoints match the Pods scheduled to it."""
        if not self.synced or self.k8s is None:
            return
        if not self.cfg.local_mode:
            # Kubernetes: the runtime creates netns and calls the CNI plugin; endpoints live from
            # ADD to DEL. Pods only bring labels (an endpoint whose Pod is gone keeps its last ones).
            for key, cep in self.cni_endpoints.items():
                ns, _, name = key.partition("/")
                obj = self.k8s.get("Pod", ns, name)
                if obj is not None and str((obj.get("metadata") or {}).get("uid", "")) in ("", cep.uid):
                    cep.pod = obj
                    self._apply(self.engine.upsert_endpoint(self._engine_endpoint(cep)))
            self.sweep()
            return
        pods = self._ensure_pods()
        if pods is None:
            log.warning("no pod CIDR yet for %s; pods wait", self.node)
            return
        desired = {}
        for pod in self.k8s.list("Pod"):
            meta = pod.get("metadata") or {}
            if on_node(pod, self.node) and not meta.get("deletionTimestamp"):
                desired[f"{meta.get('namespace') or 'default'}/{meta.get('name')}"] = pod
        for key in [k for k in pods.endpoints if k not in desired]:
            ns, _, name = key.partition("/")
            await pods.remove(ns, name)
        await pods.gc(set(desired))
        for key, pod in desired.items():
            try:
                ep = await pods.add(pod)
                if ep is not None:
                    self._apply(self.engine.upsert_endpoint(self._engine_endpoint(ep)))
                    if self._wanted_visibility(ep) != self._visibility.get(ep.key, ()):
                        self._write_policy(ep)  # the annotation changed on a running pod
            except Exception:
                # one bad pod (malformed spec, exhausted CIDR) must not stall every other pod
                log.exception("pod %s: endpoint setup failed", key)
        self.sweep()

    def sweep(self) -> None:
        """Remove endpoint and policy entries no live endpoint owns (pods that went while the agent
        was down): a recycled ifindex must never inherit a departed pod's entry."""
        assert self.maps is not None and self.writer is not None
        eps = self.endpoints().values()
        live_if = {e.link.host_ifindex for e in eps}
        live_ids = {e.ep_id for e in eps}
        for ifindex, _info in list(self.maps.endpoint_items()):
            if ifindex not in live_if:
                self.maps.del_endpoint(ifindex)
        for ep_id in [i for i, entries in self.writer.current.items() if entries and i not in live_ids]:
            self.writer.remove(ep_id)
        if self.lb is not None:
            self.lb.sweep_pods(e.key for e in eps)

    def _engine_endpoint(self, ep: PodEndpoint) -> Endpoint:
        ns_obj = self.k8s.get("Namespace", "", ep.namespace) if self.k8s is not None else None
        named: dict[str, tuple[int, int]] = {}
        spec = ep.pod.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        for c in containers if isinstance(containers, list) else []:
            ports = c.get("ports") if isinstance(c, dict) else None
            for p in ports if isinstance(ports, list) else []:
                if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                    proto = {"TCP": 6, "UDP": 17, "SCTP": 132}.get(str(p.get("protocol", "TCP")), 6)
                    named[str(p["name"])] = (proto, int(p["containerPort"]))
        labels = pod_identity_labels(ep.pod, ns_obj, self.cfg.cluster_name)
        return Endpoint(key=ep.key, identity=ep.identity, labels=labels, named_ports=named)

    # --- endpoints ----------------------------------------------------------------------------
    async def _ep_added(self, ep: PodEndpoint) -> None:
        assert self.writer is not None
        entry = self.ipcache.get(ep.ip)
        ep.identity = entry.identity if entry else 0
        self._apply(self.engine.upsert_endpoint(self._engine_endpoint(ep)))
        self._write_policy(ep)
        self._update_closed()
        if self.lb is not None:  # the pod's sockets reach Services from its first connect
            await asyncio.to_thread(self.lb.pod_added, ep.key, ep.link.netns)
        await asyncio.to_thread(self.loader.attach, ep.link.host_ifindex)

    def _wanted_visibility(self, ep: PodEndpoint) -> tuple[Visibility, ...]:
        wanted, errors = pod_visibility(ep.pod)
        if errors and self._visibility.get(ep.key) != wanted:
            log.warning("pod %s: %s ignored: %s", ep.key, "proxy-visibility", "; ".join(errors))
        return wanted

    def _policy_of(self, ep: PodEndpoint) -> EndpointPolicy:
        """The engine's policy for the endpoint, plus the L7 visibility its pod asks for
        (nodemesh/policy/visibility.py: redirects without changing a verdict)."""
        policy = self.engine.policy(ep.key) or EndpointPolicy()
        return with_visibility(policy, self._wanted_visibility(ep), self.engine.proxy_ports)

    def _write_policy(self, ep: PodEndpoint) -> None:
        """The endpoint's whole policy map and its endpoint entry (a full diff against the map)."""
        assert self.writer is not None
        wanted = self._wanted_visibility(ep)
        self.writer.apply(ep.ep_id, self._policy_of(ep))
        self._visibility[ep.key] = wanted
        self._write_endpoint(ep)

    def _write_endpoint(self, ep: PodEndpoint) -> None:
        assert self.writer is not None
        self.writer.set_endpoint(ep.link.host_ifindex, ep.ep_id, ep.identity, ep.ip, self._policy_of(ep))

    endpoint_added = _ep_added

    async def _ep_removed(self, ep: PodEndpoint) -> None:
        assert self.maps is not None and self.writer is not None
        self.maps.del_endpoint(ep.link.host_ifindex)
        if self.lb is not None:
            self.lb.pod_removed(ep.key)
        self.engine.delete_endpoint(ep.key)
        self.writer.remove(ep.ep_id)
        self._visibility.pop(ep.key, None)
        self._update_closed()
        # its connections go with it: a pod that gets the address next must not inherit them
        self.ct_gc_deleted += conntrack.flush_endpoint(self.maps, ep.ip)

    # --- conntrack ----------------------------------------------------------------------------
    def ct_gc(self) -> int:
        """Remove expired conntrack entries (the programs already ignore them)."""
        assert self.maps is not None
        n = conntrack.gc(self.maps, self.ct_lifetimes, time.monotonic_ns())
        self.ct_gc_runs += 1
        self.ct_gc_deleted += n
        return n

    async def ct_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ct_gc_interval)
            try:
                n = await asyncio.to_thread(self.ct_gc)
                if n:
                    log.debug("conntrack gc removed %d entries", n)
            except Exception:
                log.exception("conntrack gc failed")

    endpoint_removed = _ep_removed

    async def _report_pod(self, ep: PodEndpoint, status: dict[str, Any]) -> None:
        status = {**status, "hostIP": self.node_ip}
        patch = StatusPatch(
            kind="Pod", api_version="v1", namespace=ep.namespace, name=ep.name, status=status,
            field_manager="nodemesh-datapath", uid=ep.uid,
        )  # fmt: skip
        await self.bus.publish(subjects.k8s_node_status(self.node, "Pod", ep.namespace, ep.name), patch)

    # --- policy -------------------------------------------------------------------------------
    def _apply(self, ch: Changes) -> None:
        """Write one engine result: per-endpoint deltas, CIDR identities, policy status."""
        assert self.maps is not None and self.writer is not None
        self._applies += 1
        t0 = time.perf_counter()
        by_key = self.endpoints()
        for cidr, ident in ch.cidr_upserts.items():
            self.maps.set_ipcache(cidr, IPCacheValue(identity=ident))
        for key, ec in ch.endpoints.items():
            ep = by_key.get(key)
            if ep is None or ec.removed:
                continue
            if self._visibility.get(ep.key):
                self._write_policy(ep)  # the visibility entries sit on top of the engine's
                continue
            self.writer.apply_delta(ep.ep_id, ec.upserts, ec.deletes)
            self._write_endpoint(ep)
        for cidr in ch.cidr_deletes:
            if cidr not in ch.cidr_upserts:
                self.maps.del_ipcache(cidr)
        if ch.endpoints:
            self.apply_seconds.append(time.perf_counter() - t0)
            del self.apply_seconds[:-1000]
        for ref, errs in ch.status.items():
            self._queue_status(ref, tuple(str(e) for e in errs))
        self._update_closed()

    def _update_closed(self) -> None:
        """Endpoints whose policy did not fit the map fail closed: retry writing them whole, and name
        them in the status of every policy that selects them until they fit."""
        assert self.writer is not None
        by_id = {e.ep_id: e for e in self.pods.endpoints.values()} if self.pods else {}
        for ep_id in list(self.writer.failed):
            ep = by_id.get(ep_id)
            if ep is not None and self.engine.policy(ep.key) is not None:
                self.writer.apply(ep_id, self._policy_of(ep))  # with its visibility redirects
                self._write_endpoint(ep)
        closed: dict[PolicyRef, set[str]] = {}
        for ep_id, why in self.writer.failed.items():
            ep = by_id.get(ep_id)
            if ep is None:
                continue
            for ref in self.engine.selecting(ep.key):
                closed.setdefault(ref, set()).add(f"endpoint {ep.key} denies all traffic: {why}")
        for ref in set(closed) | set(self._closed_refs):
            if closed.get(ref) != self._closed_refs.get(ref):
                self._closed_refs[ref] = closed.get(ref, set())
                self._queue_status(ref, self._parse_errors.get(ref, ()))
        self._closed_refs = {r: v for r, v in self._closed_refs.items() if v}

    def _queue_status(self, ref: PolicyRef, parse_errs: tuple[str, ...]) -> None:
        self._parse_errors[ref] = parse_errs
        full = tuple(sorted(self._closed_refs.get(ref, ())))
        errs = parse_errs + full
        if self._policy_status.get(ref) == errs:
            return
        self._policy_status[ref] = errs
        cond: dict[str, Any] = {"type": "Valid", "status": "False" if errs else "True"}
        if errs:
            reason = "PolicyMapFull" if full else "InvalidPolicy"
            cond |= {"reason": reason, "message": "; ".join(errs)[:4000]}
        else:
            cond |= {"reason": "Valid", "message": "policy is valid and enforced"}
        api_version = kinds.by_kind(ref.kind).api_version
        patch = StatusPatch(
            kind=ref.kind, api_version=api_version, namespace=ref.namespace, name=ref.name,
            status={"conditions": [cond]}, field_manager="nodemesh-datapath",
        )  # fmt: skip
        asyncio.get_running_loop().create_task(
            self.bus.publish(subjects.k8s_status(ref.kind, ref.namespace, ref.name), patch)
        )

    async def on_k8s(self, ev: ObjectEvent, prev: dict[str, Any] | None) -> None:
        if ev.kind in POLICY_KINDS:
            if ev.type == "delete":
                ref = PolicyRef(ev.kind, ev.namespace, ev.name)
                self._parse_errors.pop(ref, None)
                self._closed_refs.pop(ref, None)
                self._apply(self.engine.delete_policy(ev.kind, ev.namespace, ev.name))
                self._policy_status.pop(ref, None)
            else:
                self._apply(self.engine.upsert_policy({**ev.obj, "kind": ev.kind}))
        elif ev.kind == "Node" and ev.name == self.node and not self.pod_cidr:
            self.pod_cidr = str((ev.obj.get("spec") or {}).get("podCIDR") or "")
            self.mark_dirty()
        elif ev.kind in ("Pod", "Namespace"):
            self.mark_dirty()

    # --- KV: identities, ipcache, nodes -------------------------------------------------------
    def on_identity(self, key: str, ident: Identity | None) -> None:
        if not key.startswith(IDENTITY_KEY_PREFIX):
            return
        try:
            n = int(key[3:])
        except ValueError:
            return
        self.version += 1
        if ident is None:
            self.labels.pop(n, None)
            self._apply(self.engine.delete_identity(n))
        else:
            self.labels[n] = list(ident.labels)
            self._apply(self.engine.upsert_identity(n, ident.labels))

    def on_ipcache(self, key: str, entry: IPCacheEntry | None, old: IPCacheEntry | None) -> None:
        assert self.maps is not None
        self.version += 1
        if old is not None and (entry is None or entry.ip != old.ip):
            self.ipcache.pop(old.ip, None)
            self.maps.del_ipcache(f"{old.ip}/{old.prefix_len}")
        if entry is None:
            return
        try:
            ipaddress.IPv4Address(entry.ip)
        except ValueError:
            return  # IPv6 entries: the programs are IPv4-only
        self.ipcache[entry.ip] = entry
        node_ip = self.nodes[entry.node].address if entry.node in self.nodes else ""
        value = IPCacheValue(
            identity=entry.identity,
            node_ip=ip_to_be32(node_ip) if node_ip else 0,
            node_id=self.node_ids.id_of(entry.node) if entry.node else 0,
        )
        self.maps.set_ipcache(f"{entry.ip}/{entry.prefix_len}", value)
        ep = self._endpoint_by_ip(entry.ip)
        if ep is not None and ep.identity != entry.identity:
            ep.identity = entry.identity
            self._apply(self.engine.upsert_endpoint(self._engine_endpoint(ep)))
            self._write_endpoint(ep)

    def _endpoint_by_ip(self, ip: str) -> PodEndpoint | None:
        return next((e for e in self.endpoints().values() if e.ip == ip), None)

    def on_node(self, key: str, info: NodeInfo | None, old: NodeInfo | None) -> None:
        assert self.maps is not None
        if old is not None and (info is None or info.address != old.address):
            self.maps.del_ipcache(f"{old.address}/32")
        if old is not None and (info is None or info.pod_cidr != old.pod_cidr) and router_ip(old.pod_cidr):
            self.maps.del_ipcache(f"{router_ip(old.pod_cidr)}/32")
        if info is None:
            self.nodes.pop(key, None)
            return
        self.nodes[info.name] = info
        own = info.name == self.node
        if own:
            if not self.node_ip:
                self.node_ip = info.address
            if not self.pod_cidr and info.pod_cidr:
                self.pod_cidr = info.pod_cidr
                self.mark_dirty()
        try:
            ipaddress.IPv4Address(info.address)
        except ValueError:
            return
        value = IPCacheValue(
            identity=ID_HOST if own else ID_REMOTE_NODE,
            node_ip=ip_to_be32(info.address),
            node_id=self.node_ids.id_of(info.name),
        )
        self.maps.set_ipcache(f"{info.address}/32", value)
        if router_ip(info.pod_cidr):  # host-originated traffic toward pods leaves from here
            self.maps.set_ipcache(f"{router_ip(info.pod_cidr)}/32", value)

    # --- auth ---------------------------------------------------------------------------------
    def _auth_key(self, v: AuthVerdict) -> AuthKey:
        return self._auth_key_of(v.key)

    def _auth_key_of(self, k: AuthKeyMsg) -> AuthKey:
        return AuthKey(
            local_identity=k.local_identity,
            remote_identity=k.remote_identity,
            remote_node_id=self.node_ids.id_of(k.remote_node),
            auth_type=k.auth_type,
        )

    def auth_needs(self, ep: PodEndpoint) -> set[authgate.Need] | None:
        """The auth entries traffic of ``ep``'s identity is checked against (None: identity unknown)."""
        # recomputed only when something it derives from changed (the gate polls it)
        gen = (self.version, self._applies, tuple(sorted(self.nodes)))
        cached = self._needs.get(ep.key)
        if cached is not None and cached[0] == gen:
            return cached[1]
        entry = self.ipcache.get(ep.ip)
        if entry is None or entry.identity not in self.labels:
            return None
        ident = entry.identity
        id_nodes: dict[int, set[str]] = {}
        for e in self.ipcache.values():
            if e.node and e.prefix_len == 32:
                id_nodes.setdefault(e.identity, set()).add(e.node)
        local = [p for p in self.engine.required_auth_pairs() if ident in (p.local, p.remote)]
        elsewhere = [i for i, ns in id_nodes.items() if ns - {self.node}]
        remote = self.engine.auth_pairs_toward(ident, elsewhere)
        frozen = {i: frozenset(ns) for i, ns in id_nodes.items()}
        out = authgate.needs(self.node, ident, local, remote, frozen, self.nodes)
        self._needs[ep.key] = (gen, out)
        return out

    def has_auth(self, key: AuthKeyMsg) -> bool:
        assert self.maps is not None
        return self.maps.auth_expiry(self._auth_key_of(key)) > time.monotonic_ns()

    async def auth_gate(self, ep: PodEndpoint) -> dict[str, str]:
        """Hold a new pod's workload until its identity and auth verdicts are in place (bounded)."""
        try:
            kv = await self.bus.kv(BUCKET_AUTH.name)
        except Exception:  # no bucket yet: remote grants count as missing until the timeout
            kv = None
        res = await authgate.wait(
            lambda: self.auth_needs(ep), self.has_auth, kv, self.node, self.cfg.auth_gate_timeout
        )
        self._needs.pop(ep.key, None)
        self.auth_gate_waits.append(res.seconds)
        del self.auth_gate_waits[:-1000]
        if not res.ready:
            self.auth_gate_timeouts += 1
            log.warning(
                "pod %s starts without its auth verdicts after %.1fs: %s",
                ep.key, res.seconds, ", ".join(res.missing[:8]),
            )  # fmt: skip
        return res.condition()

    def on_auth_granted(self, v: AuthVerdict) -> None:
        assert self.maps is not None
        expiry = time.monotonic_ns() + int((v.expires - time.time()) * 1e9)
        self.maps.set_auth(self._auth_key(v), max(expiry, 0))

    def on_auth_revoked(self, v: AuthVerdict) -> None:
        assert self.maps is not None
        self.maps.del_auth(self._auth_key(v))

    # --- flow directory (services.datapath.flows.Directory) -----------------------------------
    def pod_of(self, ip: str) -> tuple[str, str]:
        e = self.ipcache.get(ip)
        return (e.namespace, e.pod) if e else ("", "")

    def labels_of(self, identity: int) -> list[str]:
        if identity in RESERVED and identity:
            return list(RESERVED[identity])
        return self.labels.get(identity, [])

    def node_name(self, node_id: int) -> str:
        return self.node_ids.name_of(node_id)

    # --- node address -------------------------------------------------------------------------
    def add_node_address(self) -> None:
        """Local mode: the node address (authd listens there) and the node's router IP (``.1`` of the
        pod CIDR, the source of host → pod traffic) on ``lo``, scope host: a global-scope 127/8
        address could be picked as the source toward pods, which the kernel refuses on a veth."""
        if not self.cfg.local_mode:
            return
        addrs = [a for a in (self.node_ip, router_ip(self.pod_cidr)) if a and a != "127.0.0.1"]
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for a in addrs:
                try:
                    ipr.addr("add", index=lo, address=a, prefixlen=32, scope=254)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
