"""Operator wiring: replay K8S, hold the operator lease, and run passes while holding it.

Every instance replays the K8S stream; the one holding the ``operator`` lease (KV ``leases``, as the
watcher's) runs a pass after each change (debounced) and every ``resync_s``, and sends each write as
a request to the active watcher (``k8s.write.*``), the only process that talks to the Kubernetes
API. A write that fails (no active watcher during a failover, a 409 from a stale view) is retried
by a later pass, which derives it again from the state as it then is. A standby does nothing
until it takes the lease.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from nodemesh import subjects
from nodemesh.errors import BusError
from nodemesh.k8scache import K8sCache
from nodemesh.lease import Lease
from nodemesh.messages.k8s import ObjectEvent, ObjectWrite, WriteResult
from nodemesh.runtime import Service
from nodemesh.streams import BUCKET_LEASES, LEASE_OPERATOR
from services.operator.cell import CELL
from services.operator.config import OperatorConfig
from services.operator.reconcile import reconcile

__all__ = ["main"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def main(svc: Service) -> None:
    cfg = svc.cfg
    assert isinstance(cfg, OperatorConfig)
    operator_id = cfg.operator_id or f"{cfg.node}-{os.getpid()}-{secrets.token_hex(3)}"
    writes = Counter(
        "nodemesh_operator_writes",
        "Writes sent to the watcher",
        ["kind", "op", "result"],
        registry=svc.registry,
    )
    passes = Counter("nodemesh_operator_passes", "Reconcile passes run", registry=svc.registry)
    leader = Gauge("nodemesh_operator_leader", "1 while this instance holds the lease", registry=svc.registry)
    dirty = asyncio.Event()

    def changed(_ev: ObjectEvent, _prev: dict[str, Any] | None) -> None:
        dirty.set()

    k8s = K8sCache(svc.bus, CELL.kinds, on_change=changed)
    await k8s.start()
    svc.on_stop(k8s.stop)
    lease = Lease(
        await svc.bus.kv(BUCKET_LEASES.name),
        LEASE_OPERATOR,
        operator_id,
        grace=cfg.lease_grace_s,
        timeout=min(cfg.lease_renew_s, cfg.lease_grace_s / 2),
    )
    svc.on_stop(lease.release)
    gate = svc.gate("synced")

    async def send(w: ObjectWrite) -> None:
        subject = subjects.k8s_write(w.kind, w.namespace, w.name)
        try:
            res = await svc.bus.request(subject, w, WriteResult, timeout=cfg.write_timeout_s)
        except BusError as e:
            writes.labels(kind=w.kind, op=w.op, result="unsent").inc()
            svc.log.info("write %s %s %s/%s not made: %s", w.op, w.kind, w.namespace, w.name, e)
            return
        if res.ok:
            writes.labels(kind=w.kind, op=w.op, result="ok").inc()
            svc.log.info("%s %s %s/%s", w.op, w.kind, w.namespace, w.name)
        else:
            writes.labels(kind=w.kind, op=w.op, result=str(res.code)).inc()
            svc.log.warning(
                "write %s %s %s/%s refused: %s %s %s",
                w.op,
                w.kind,
                w.namespace,
                w.name,
                res.code,
                res.reason,
                res.message,
            )

    async def one_pass() -> None:
        todo = reconcile(
            k8s.list,
            _now(),
            default_ingress_mode=cfg.default_ingress_mode,
            shared_ingress_namespace=cfg.shared_ingress_namespace,
        )
        passes.inc()
        for w in todo:
            if not lease.held:
                return
            await send(w)

    async def run_active() -> None:
        dirty.set()
        while True:
            try:
                await asyncio.wait_for(dirty.wait(), min(cfg.lease_renew_s, cfg.resync_s))
                await asyncio.sleep(cfg.debounce_s)  # batch a burst of changes into one pass
                dirty.clear()
                due = True
            except TimeoutError:
                due = asyncio.get_running_loop().time() - last[0] >= cfg.resync_s
            if not await lease.renew() and not lease.held:
                svc.log.warning("lost the operator lease: stepping down")
                return
            if due:
                last[0] = asyncio.get_running_loop().time()
                await one_pass()

    last = [0.0]

    async def elect() -> None:
        await k8s.synced.wait()
        gate.set()
        while True:
            if await lease.try_acquire():
                svc.log.info("became the active operator", extra={"operator": operator_id})
                leader.set(1)
                try:
                    await run_active()
                except Exception as e:  # e.g. NATS gone: stand by, try again
                    svc.log.error("active role failed: %r", e, exc_info=e)
                    await asyncio.sleep(cfg.lease_renew_s)
                finally:
                    leader.set(0)
                    await lease.release()
            else:
                await asyncio.sleep(cfg.lease_renew_s)

    svc.spawn(elect(), "leader-election")
