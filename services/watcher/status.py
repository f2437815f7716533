"""Status patches from other services (``k8s.status.*``) applied to the API's status subresource.

Patches land in the work-queue stream STATUS, so a patch published while no watcher is active (a
failover takes up to the lease TTL) waits there instead of being lost. Only the active watcher pulls
from the shared durable consumer; a patch is acked once applied or found unappliable (garbage,
unknown kind, vanished object), and one delivered to a watcher that died before acking is
redelivered to its successor after the ack wait.

A patch is a JSON merge patch of ``{"status": …}``; with a uid it also carries ``metadata.uid``,
which the API treats as a precondition (409 on a recreated object, which we skip). An object
that is gone is ignored with a debug log.

A patch is bound to its subject, which NATS permissions bind to its sender (docs/security.md): it
is applied only to the object its subject names (a payload naming another is dropped). A Pod's
status comes only from its node: on ``k8s.status.from.<node>.pod.…`` (only that node's datapath
may publish there), applied only if the Pod's ``spec.nodeName`` is that node, and never changing a
``podIP``/``podIPs`` already set — so no node can map its address to another pod's identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.kinds import Kind, by_kind
from nodemesh.messages.k8s import StatusPatch
from nodemesh.streams import STREAM_STATUS
from services.watcher.kube import ApiStatusError, KubeClient
from services.watcher.metrics import WatcherMetrics

__all__ = ["DURABLE", "StatusApplier", "pull_status_patches"]

DURABLE = "status-applier"

log = logging.getLogger("nodemesh.watcher.status")


class StatusApplier:
    def __init__(self, kube: KubeClient, metrics: WatcherMetrics) -> None:
        self.kube = kube
        self.metrics = metrics

    def _refuse(self, result: str, why: str, patch: StatusPatch, subject: str) -> None:
        log.warning(
            "status patch for %s %s/%s on %s refused: %s",
            patch.kind,
            patch.namespace,
            patch.name,
            subject,
            why,
        )
        self.metrics.status_patches.labels(result=result).inc()

    async def _pod_allowed(self, kind: Kind, patch: StatusPatch, node: str, subject: str) -> bool:
        """A Pod's status from ``node``: the pod is on it and keeps the address it has."""
        try:
            pod = await self.kube.get(kind, patch.namespace, patch.name)
        except ApiStatusError as e:
            if e.code == 404:
                self.metrics.status_patches.labels(result="gone").inc()
            else:
                self._refuse("error", f"cannot read the pod: {e}", patch, subject)
            return False
        spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
        if (spec or {}).get("nodeName") != node:
            self._refuse("wrong_node", f"the pod is not on {node}", patch, subject)
            return False
        current = pod.get("status") if isinstance(pod.get("status"), dict) else {}
        for field in ("podIP", "podIPs"):
            have, want = (current or {}).get(field), patch.status.get(field)
            if have and field in patch.status and want != have:
                self._refuse("ip_immutable", f"{field} is set and never changes", patch, subject)
                return False
        return True

    async def handle(self, patch: StatusPatch, subject: str) -> None:
        where = subjects.parse_k8s_status(subject)
        if where is None or where[1:] != (patch.kind.lower(), patch.namespace, patch.name):
            self._refuse("subject_mismatch", "the payload names another object", patch, subject)
            return
        node = where[0]
        try:
            kind = by_kind(patch.kind)
        except KeyError:
            log.warning("status patch for unknown kind %r dropped", patch.kind)
            self.metrics.status_patches.labels(result="unknown_kind").inc()
            return
        if kind.kind == "Pod":
            if not node:
                self._refuse("unbound", "a Pod's status comes only from its node", patch, subject)
                return
            if not await self._pod_allowed(kind, patch, node, subject):
                return
        if not kind.has_status:
            self.metrics.status_patches.labels(result="no_status").inc()
            log.warning("status patch for %s, which has no status subresource, dropped", kind.kind)
            return
        body: dict[str, Any] = {"status": patch.status}
        if patch.uid:
            body["metadata"] = {"uid": patch.uid}
        try:
            await self.kube.patch_status(kind, patch.namespace, patch.name, body)
        except ApiStatusError as e:
            if e.code == 404:
                log.debug(
                    "status patch for vanished %s %s/%s ignored", kind.kind, patch.namespace, patch.name
                )
                self.metrics.status_patches.labels(result="gone").inc()
            elif e.code == 409 and patch.uid:
                log.debug(
                    "status patch for %s %s/%s skipped: uid changed", kind.kind, patch.namespace, patch.name
                )
                self.metrics.status_patches.labels(result="uid_mismatch").inc()
            else:
                log.warning("status patch for %s %s/%s failed: %s", kind.kind, patch.namespace, patch.name, e)
                self.metrics.status_patches.labels(result="error").inc()
            return
        except Exception as e:
            log.warning("status patch for %s %s/%s failed: %r", kind.kind, patch.namespace, patch.name, e)
            self.metrics.status_patches.labels(result="error").inc()
            return
        self.metrics.status_patches.labels(result="applied").inc()


async def pull_status_patches(bus: Bus, applier: StatusApplier, active: Callable[[], bool]) -> None:
    """Apply patches from the STATUS work queue while ``active()``; returns when it turns False."""
    psub = await bus.js.pull_subscribe(
        subjects.K8S_STATUS_ALL,
        durable=DURABLE,
        stream=STREAM_STATUS.name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=1000),
    )
    try:
        while active():
            try:
                msgs = await psub.fetch(64, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in msgs:
                patch = bus.decode_or_count(msg, StatusPatch)
                if patch is not None:
                    await applier.handle(patch, msg.subject)
                await msg.ack()
    finally:
        try:
            await psub.unsubscribe()
        except Exception as e:  # connection already gone: the durable consumer stays on the server
            log.debug("status pull unsubscribe: %r", e)
