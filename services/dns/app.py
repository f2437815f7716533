"""DNS service wiring: K8S stream → Zone (in memory) → Responder ← UDP/TCP server → upstreams.

The sockets are bound first, so a taken address fails the start at once (and the supervisor or
Kubernetes restarts it). Until the K8S replay and the watcher's Synced marker are in, names of the
cluster domain are answered SERVFAIL (a client retries; an NXDOMAIN would be cached) while forwarding
already works; then the readiness gate opens. Each object change updates the zone in the stream
callback, so answers follow a change as soon as this replica has read it.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from nodemesh.errors import ConfigError
from nodemesh.k8scache import K8sCache
from nodemesh.messages.k8s import ObjectEvent
from nodemesh.runtime import Service
from services.dns.answer import Responder
from services.dns.cell import CELL
from services.dns.config import DnsConfig
from services.dns.forward import Forwarder
from services.dns.metrics import DnsMetrics
from services.dns.server import DnsServer
from services.dns.upstreams import Upstreams, parse_hostport
from services.dns.zone import Zone

__all__ = ["DnsApp", "listen_addresses", "main", "start"]


def listen_addresses(spec: str) -> list[tuple[str, int]]:
    try:
        out = [parse_hostport(s) for s in spec.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"listen: {e}") from e
    if not out:
        raise ConfigError("listen: no address")
    return out


@dataclass
class DnsApp:
    zone: Zone
    responder: Responder
    server: DnsServer
    k8s: K8sCache


async def start(svc: Service) -> DnsApp:
    """Wire and start one DNS server; returns it (tests read its bound addresses)."""
    cfg = svc.cfg
    assert isinstance(cfg, DnsConfig)
    gate = svc.gate("synced")
    zone = Zone(cfg.cluster_domain, ttl=cfg.ttl_s)
    responder = Responder(zone, cache_entries=cfg.cache_entries)
    metrics = DnsMetrics(svc.registry)
    metrics.zone_names.set_function(lambda: float(zone.names))
    listen = listen_addresses(cfg.listen)
    # Bound before the upstream list exists: with port 0 our own port is known only after binding.
    upstreams = Upstreams(cfg.upstreams, cfg.resolv_conf, [])
    forwarder = Forwarder(upstreams, cfg.forward_timeout_s, cfg.max_forwards)
    server = DnsServer(responder, forwarder, metrics, max_tcp=cfg.max_tcp, tcp_idle_s=cfg.tcp_idle_s)
    bound = await server.start(listen)
    upstreams.own.update(bound)
    svc.on_stop(server.stop)

    def changed(ev: ObjectEvent, _prev: dict[str, Any] | None) -> None:
        zone.apply(ev.kind, ev.type == "delete", ev.namespace, ev.name, ev.obj)

    k8s = K8sCache(svc.bus, CELL.kinds, on_change=changed)
    await k8s.start()
    svc.on_stop(k8s.stop)

    async def initial_sync() -> None:
        await k8s.synced.wait()
        zone.synced = True
        # The replayed cluster state is long-lived: out of the collector's sight, a full collection
        # no longer walks every Service's objects (tens of ms with 10,000) in the middle of queries.
        gc.collect()
        gc.freeze()
        gate.set()
        svc.log.info(
            "initial sync done; serving the cluster domain",
            extra={"domain": zone.domain, "names": zone.names, "listen": [f"{h}:{p}" for h, p in bound]},
        )

    svc.spawn(initial_sync(), "initial-sync")
    return DnsApp(zone, responder, server, k8s)


async def main(svc: Service) -> None:
    await start(svc)
