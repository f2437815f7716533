"""Datapath service wiring: ``python -m services.datapath --node node-1 …`` (one per node).

Order matters for fail-closed behaviour: programs are compiled and the pinned maps opened first (a
restart keeps enforcing what the previous run wrote); then the KV mirrors (nodes, identities,
ipcache) and the K8S cache replay; only after all of them are synced does the agent reconcile this
node's pods and open its readiness gate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from nodemesh import subjects
from nodemesh.k8scache import K8sCache
from nodemesh.kvmirror import KvMirror
from nodemesh.messages.auth import AuthVerdict
from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from nodemesh.messages.k8s import ObjectEvent
from nodemesh.netns import scope_for
from nodemesh.nodestate import DatapathState, write_datapath_state
from nodemesh.policy.model import ProxyPorts
from nodemesh.runtime import Service
from nodemesh.streams import BUCKET_IDENTITIES, BUCKET_IPCACHE, BUCKET_NODES, IDENTITY_KEY_PREFIX
from services.datapath.accesslog import mirror_enricher, start_configured
from services.datapath.agent import Agent, router_ip
from services.datapath.authsync import AuthSync
from services.datapath.capacity import CapacityCollector
from services.datapath.cell import CELL
from services.datapath.cni.handler import CniHandler
from services.datapath.cni.server import EndpointSocket
from services.datapath.config import DatapathConfig
from services.datapath.conntrack import CtLifetimes
from services.datapath.events import EventPump
from services.datapath.heartbeat import run_heartbeat
from services.datapath.hubblemetrics import FlowMetrics
from services.datapath.l7redirect import configure as configure_proxy
from services.datapath.l7redirect import ensure_proxy_route
from services.datapath.lb.loader import detach_node
from services.datapath.loader import Loader
from services.datapath.services import ServiceLB

__all__ = ["main", "write_state"]


def write_state(cfg: DatapathConfig, pin_dir: str, scope: str, pod_cidr: str = "") -> None:
    """What ``cleanup_all`` (and ``nodemesh exec``) need to find everything this node made."""
    state = DatapathState(
        node=cfg.node,
        scope=scope,
        pin_dir=pin_dir,
        node_ip=cfg.node_ip,
        local_mode=cfg.local_mode,
        router_ip=router_ip(pod_cidr or cfg.pod_cidr),
    )
    write_datapath_state(cfg.data_dir, state)


async def main(svc: Service) -> None:
    cfg = svc.cfg
    assert isinstance(cfg, DatapathConfig)
    lifetimes = CtLifetimes(
        tcp=cfg.ct_lifetime_tcp, tcp_syn=cfg.ct_lifetime_tcp_syn, tcp_fin=cfg.ct_lifetime_tcp_fin,
        any=cfg.ct_lifetime_any,
    )  # fmt: skip
    lifetimes.validate()
    scope = cfg.scope or scope_for(cfg.data_dir)
    defines = lifetimes.defines() | ({"NM_POLICY_MAX": cfg.policy_map_max} if cfg.policy_map_max > 0 else {})
    loader = Loader(cfg.node, pin_root=cfg.pin_root, scope=scope, defines=defines)
    agent = Agent(cfg, svc.bus, loader)
    svc.registry.register(CapacityCollector(agent))
    write_state(cfg, loader.pin_dir, loader.scope)
    await asyncio.to_thread(agent.load)
    svc.log.info("programs loaded", extra={"pin_dir": loader.pin_dir, "reused_pins": loader.reused_pins})
    # L7 redirect (docs/l7-policy.md): where the node's Envoy listens, and the proxy policy route
    if cfg.lb:  # Services translated at the socket (docs/services.md)
        agent.lb = ServiceLB(cfg, loader.pin_dir, svc.registry)
        await asyncio.to_thread(agent.lb.load)
    else:  # switched off: a previous run's socket programs must not go on translating
        await asyncio.to_thread(detach_node, loader.pin_dir)
    assert agent.maps is not None
    configure_proxy(agent.maps, cfg.node_ip, ProxyPorts())
    await asyncio.to_thread(ensure_proxy_route)

    # L7 flows from the node's Envoy, enriched from the same ipcache/identity mirror as L3/L4 flows
    # One set of Hubble flow metrics (hubble_flows_processed_total, …) for both kinds of flows.
    flow_metrics = FlowMetrics(svc.registry, cfg.hubble_metrics_context)
    await start_configured(svc, cfg.node, cfg.accesslog, cfg.data_dir, mirror_enricher(agent), flow_metrics)

    services = agent.lb.service_of if agent.lb is not None else None  # destination_service in flows
    pump = EventPump(loader, agent, svc.bus, svc.registry, cfg.event_queue_batches, services, flow_metrics)
    pump.start()
    svc.spawn(pump.run(), "flows")

    def on_node(key: str, info: NodeInfo | None, old: NodeInfo | None) -> None:
        agent.on_node(key, info, old)
        if agent.lb is not None:  # NodePorts follow the node addresses
            agent.lb.on_node(key, info, old)

    mirrors: dict[str, KvMirror[Any]] = {
        "nodes": KvMirror(svc.bus, BUCKET_NODES.name, NodeInfo, on_update=on_node),
        "identities": KvMirror(
            svc.bus,
            BUCKET_IDENTITIES.name,
            Identity,
            keys=IDENTITY_KEY_PREFIX + ">",  # the labels.<hash> index keys hold IdentityRefs, not Identities
            on_update=lambda k, new, _old: agent.on_identity(k, new),
        ),
        "ipcache": KvMirror(svc.bus, BUCKET_IPCACHE.name, IPCacheEntry, on_update=agent.on_ipcache),
    }
    for name, mirror in mirrors.items():
        svc.spawn(mirror.run(), f"kv-{name}")
    synced = {name: m.synced for name, m in mirrors.items()}

    async def granted(v: AuthVerdict, _m: Msg) -> None:
        agent.on_auth_granted(v)

    async def revoked(v: AuthVerdict, _m: Msg) -> None:
        agent.on_auth_revoked(v)

    await svc.bus.subscribe(subjects.auth_granted(cfg.node), AuthVerdict, granted)
    await svc.bus.subscribe(subjects.auth_revoked(cfg.node), AuthVerdict, revoked)
    # core NATS verdicts published while this agent was down or reconnecting are lost: the map is
    # reconciled against KV auth after every (re)sync of that bucket
    auth_sync = AuthSync(svc.bus, cfg.node, agent.maps, agent._auth_key_of)
    svc.spawn(auth_sync.run(), "kv-auth")
    svc.spawn(auth_sync.follow_reconnects(), "auth-resync")
    synced["auth"] = auth_sync.mirror.synced
    svc.spawn(agent.ct_gc_loop(), "ct-gc")

    async def on_k8s(ev: ObjectEvent, prev: dict[str, Any] | None) -> None:
        await agent.on_k8s(ev, prev)
        if agent.lb is not None:
            agent.lb.on_k8s(ev, prev)

    # Kubernetes mode: pods arrive through the CNI plugin (docs/kubernetes.md), never made here
    cni: CniHandler | None = None
    cni_socket: EndpointSocket | None = None
    if not cfg.local_mode and cfg.cni_socket != "off":
        cni = CniHandler(agent, Path(cfg.data_dir) / "cni-endpoints.json", cfg.cni_pod_wait)
        cni_socket = EndpointSocket(cfg.cni_socket or f"{cfg.data_dir}/cni/cni.sock", cni.handle)
        await cni_socket.start()

    cache = K8sCache(svc.bus, kinds=CELL.kinds, on_change=on_k8s)
    agent.k8s = cache
    if agent.lb is not None:
        agent.lb.k8s = cache
    await cache.start()
    svc.spawn(agent.reconcile_loop(), "reconcile")
    gate = svc.gate("synced")

    async def open_gate() -> None:
        await cache.synced.wait()
        for ev in synced.values():
            await ev.wait()
        if cni is not None:  # before any reconcile may sweep: their entries must never lapse
            await cni.restore()
        agent.synced = True
        write_state(cfg, loader.pin_dir, loader.scope, agent.pod_cidr)  # the CIDR may come from the Node
        await asyncio.to_thread(agent.add_node_address)
        if agent.maps is not None:
            configure_proxy(agent.maps, agent.node_ip, ProxyPorts())  # the address may come from the KV
        if agent.lb is not None:  # Services before pods: a pod's first connect finds them
            agent.lb.pod_cidr = agent.lb.pod_cidr or agent.pod_cidr  # lb-l7: the router IP's CIDR
            agent.lb.sync()
            await asyncio.to_thread(agent.lb.set_host_sockets)
        await agent.reconcile()
        if cni is not None:
            cni.ready.set()
        gate.set()
        if cfg.node_heartbeat > 0:  # ready: from now on this node vouches for itself
            svc.spawn(
                run_heartbeat(svc.bus, cfg.node, cfg.node_heartbeat, lambda: cache.get("Node", "", cfg.node)),
                "heartbeat",
            )
        svc.log.info("synced", extra={"pods": len(agent.endpoints())})

    svc.spawn(open_gate(), "sync")

    async def stop() -> None:
        if cni_socket is not None:
            await cni_socket.stop()
        await cache.stop()
        pump.stop()
        if agent.pods is not None:
            await agent.pods.stop()
        loader.close()  # programs stay attached and maps pinned: enforcement continues
        if agent.lb is not None:
            agent.lb.close()  # socket programs too: Services keep being translated

    svc.on_stop(stop)
