"""Status patches from other services (``k8s.status.*``) applied to the API's status subresource.

Only the active watcher subscribes. A patch is a JSON merge patch of ``{"status": …}``; with a uid
it also carries ``metadata.uid``, which the API treats as a precondition (409 on a recreated
object, which we skip). An object that is gone is ignored with a debug log.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import StatusPatch
from services.watcher.kube import ApiStatusError, KubeClient
from services.watcher.metrics import WatcherMetrics

__all__ = ["StatusApplier"]

log = logging.getLogger("nodemesh.watcher.status")


class StatusApplier:
    def __init__(self, kube: KubeClient, metrics: WatcherMetrics) -> None:
        self.kube = kube
        self.metrics = metrics

    async def handle(self, patch: StatusPatch, _msg: Msg | None = None) -> None:
        try:
            kind = by_kind(patch.kind)
        except KeyError:
            log.warning("status patch for unknown kind %r dropped", patch.kind)
            self.metrics.status_patches.labels(result="unknown_kind").inc()
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
