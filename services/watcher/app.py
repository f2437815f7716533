"""Watcher wiring: replay the stream, elect a leader, and run the active role while holding the lease.

Every instance runs the lease loop; a new holder first replays stream K8S (so it starts from
exactly what the previous holder left). The holder runs :class:`ActiveWatcher` and applies status patches;
when it cannot renew (lost to another, or NATS unreachable past the grace period) it cancels that
work and becomes a standby again. On a graceful stop the lease is released at once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

from nodemesh.errors import ConfigError
from nodemesh.kinds import KINDS, Kind, lookup
from nodemesh.lease import Lease
from nodemesh.runtime import Service
from nodemesh.streams import BUCKET_LEASES, LEASE_WATCHER
from services.watcher.config import WatcherConfig
from services.watcher.kube import KubeClient
from services.watcher.metrics import WatcherMetrics
from services.watcher.status import StatusApplier, pull_status_patches
from services.watcher.sync import ActiveWatcher, LostLeadership
from services.watcher.writes import WriteApplier, serve_writes

__all__ = ["LEASE_WATCHER", "main", "select_kinds"]


def select_kinds(spec: str) -> list[Kind]:
    if not spec.strip():
        return list(KINDS)
    out = []
    for name in (k.strip() for k in spec.split(",")):
        if not name:
            continue
        kind = lookup(name)
        if kind is None:
            raise ConfigError(f"kinds: unknown kind {name!r}")
        out.append(kind)
    return out


async def main(svc: Service) -> None:
    cfg = svc.cfg
    assert isinstance(cfg, WatcherConfig)
    watcher_id = cfg.watcher_id or f"{cfg.node}-{os.getpid()}-{secrets.token_hex(3)}"
    kinds = select_kinds(cfg.kinds)
    token = ""
    if cfg.api_token_file:
        try:
            token = (await asyncio.to_thread(Path(cfg.api_token_file).read_text)).strip()
        except OSError as e:
            raise ConfigError(f"api_token_file: {e}") from e
    kube = KubeClient.from_settings(
        cfg.api_url, cfg.kubeconfig, cfg.in_cluster, cfg.list_page_size, token=token
    )
    metrics = WatcherMetrics(svc.registry)
    lease = Lease(
        await svc.bus.kv(BUCKET_LEASES.name),
        LEASE_WATCHER,
        watcher_id,
        grace=cfg.lease_grace_s,
        timeout=min(cfg.lease_renew_s, cfg.lease_grace_s / 2),
    )
    applier = StatusApplier(kube, metrics)
    writer = WriteApplier(kube, metrics)
    gate = svc.gate("synced")

    async def cleanup() -> None:
        await lease.release()
        kube.close()

    svc.on_stop(cleanup)

    async def run_active() -> None:
        active = ActiveWatcher(
            svc.bus,
            kube,
            kinds,
            watcher_id,
            metrics,
            lambda: lease.held,
            watch_timeout_s=cfg.watch_timeout_s,
            missing_retry_s=cfg.missing_kind_retry_s,
        )
        status_task: asyncio.Task[None] = asyncio.create_task(
            pull_status_patches(svc.bus, applier, lambda: lease.held), name="watcher:status"
        )
        task: asyncio.Task[Any] = asyncio.create_task(active.run(gate.set), name="watcher:active")
        # The operator's writes: answered only while active (the operator retries on no responders).
        writes_sub = await serve_writes(svc.bus, writer, lambda: lease.held)
        try:
            while True:
                await asyncio.wait([task], timeout=cfg.lease_renew_s)
                if task.done():
                    exc = task.exception()
                    if exc is not None and not isinstance(exc, LostLeadership):
                        # E.g. JetStream unavailable while publishing Synced: step down, try again.
                        svc.log.error("active watcher failed: %r; stepping down", exc, exc_info=exc)
                        await asyncio.sleep(cfg.lease_renew_s)
                    return
                if not await lease.renew() and not lease.held:
                    svc.log.warning("lost the watcher lease: stepping down")
                    return
        finally:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, LostLeadership):
                pass
            except Exception as e:  # already logged above when it ended the active role
                svc.log.debug("active role ended: %r", e)
            try:
                await writes_sub.unsubscribe()
            except Exception as e:  # connection already gone
                svc.log.debug("write subscription: %r", e)
            status_task.cancel()
            try:
                await status_task
            except asyncio.CancelledError:
                pass
            except Exception as e:
                svc.log.debug("status applier ended: %r", e)

    async def elect() -> None:
        while True:
            if await lease.try_acquire():
                svc.log.info("became the active watcher", extra={"watcher": watcher_id})
                metrics.leader.set(1)
                metrics.lease_transitions.labels(to="active").inc()
                try:
                    await run_active()
                except Exception as e:  # e.g. NATS gone while subscribing: stand by, try again
                    svc.log.error("active role failed: %r", e, exc_info=e)
                    await asyncio.sleep(cfg.lease_renew_s)
                finally:
                    metrics.leader.set(0)
                    metrics.lease_transitions.labels(to="standby").inc()
                    await lease.release()
            else:
                gate.set()  # a standby is ready once its lease loop runs
                await asyncio.sleep(cfg.lease_renew_s)

    svc.spawn(elect(), "leader-election")
