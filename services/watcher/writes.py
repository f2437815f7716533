"""The operator's object writes (``k8s.write.*``, request/reply), applied by the active watcher.

The watcher stays the only Kubernetes API client, so the operator needs no API credentials and
works against any API server. What a write may do is checked here, not trusted to the sender
(NATS lets only the operator publish ``k8s.write.*``, and this narrows it further):

- the subject names the object the payload names (as status patches);
- Services only, and only the operator's own (label ``nodemesh.io/managed-by: nodemesh-operator``):
  a create must carry the label, a patch or delete applies only to a Service that has it and may not
  change it; such a Service is a LoadBalancer without selector or external IPs (it cannot steer
  traffic to pods or addresses) and is named ``cilium-gateway-…`` or ``cilium-ingress…``;
- status of a Service (``loadBalancer`` and ``conditions`` only) or of a CiliumLoadBalancerIPPool
  (``conditions`` only).

Every request is answered with a :class:`WriteResult` (the API's code on failure, 403 for what is
refused here), so the operator knows the outcome; only the active watcher subscribes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import ObjectWrite, WriteResult
from services.watcher.kube import ApiStatusError, KubeClient
from services.watcher.metrics import WatcherMetrics

__all__ = ["MANAGED_BY", "MANAGER", "WriteApplier", "refusal"]

log = logging.getLogger("nodemesh.watcher.writes")

MANAGED_BY = "nodemesh.io/managed-by"
MANAGER = "nodemesh-operator"
NAME_PREFIXES = ("cilium-gateway-", "cilium-ingress")
STATUS_FIELDS = {"Service": {"loadBalancer", "conditions"}, "CiliumLoadBalancerIPPool": {"conditions"}}


def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _labels(obj: dict[str, Any]) -> dict[str, Any]:
    return _map(_map(obj.get("metadata")).get("labels"))


def _safe_spec(spec: dict[str, Any]) -> str:
    if "type" in spec and spec["type"] != "LoadBalancer":
        return "only LoadBalancer Services"
    for field in ("selector", "externalIPs", "externalName"):
        if spec.get(field):
            return f"spec.{field} is not the operator's to set"
    return ""


def refusal(w: ObjectWrite, subject: str) -> str:
    """Why ``w`` (received on ``subject``) may not be applied without looking at the cluster; "" if
    it may be, as far as the payload goes."""
    where = subjects.parse_k8s_write(subject)
    if where is None or where != (w.kind.lower(), w.namespace, w.name):
        return "the payload names another object than the subject"
    if w.op == "status":
        allowed = STATUS_FIELDS.get(w.kind)
        if allowed is None:
            return f"status of {w.kind} is not the operator's to write"
        status = w.obj.get("status")
        if set(w.obj) != {"status"} or not isinstance(status, dict) or not set(status) <= allowed:
            return f"only status.{'/'.join(sorted(allowed))} of a {w.kind}"
        return ""
    if w.kind != "Service":
        return f"the operator writes only Services, not {w.kind}"
    if not w.name.startswith(NAME_PREFIXES):
        return "the operator's Services are named cilium-gateway-… or cilium-ingress…"
    if w.op == "create":
        meta = _map(w.obj.get("metadata"))
        if meta.get("name") != w.name or meta.get("namespace", w.namespace) != w.namespace:
            return "the object names another Service"
        if _labels(w.obj).get(MANAGED_BY) != MANAGER:
            return f"a created Service must carry {MANAGED_BY}={MANAGER}"
        return _safe_spec(_map(w.obj.get("spec"))) or (
            "" if _map(w.obj.get("spec")).get("type") else "only LoadBalancer Services"
        )
    if w.op == "patch":
        if "status" in w.obj or set(w.obj) - {"metadata", "spec"}:
            return "a patch may change metadata and spec only"
        meta = _map(w.obj.get("metadata"))
        if set(meta) - {"labels", "annotations", "ownerReferences"}:
            return "a patch may change labels, annotations and owners only"
        if MANAGED_BY in _map(meta.get("labels")) and _map(meta.get("labels"))[MANAGED_BY] != MANAGER:
            return f"a patch may not change {MANAGED_BY}"
        return _safe_spec(_map(w.obj.get("spec")))
    return ""  # delete: checked against the current object


class WriteApplier:
    def __init__(self, kube: KubeClient, metrics: WatcherMetrics) -> None:
        self.kube = kube
        self.metrics = metrics

    async def apply(self, w: ObjectWrite, subject: str) -> WriteResult:
        why = refusal(w, subject)
        if why:
            return self._refused(w, why)
        kind = by_kind(w.kind)
        try:
            if w.op in ("patch", "delete"):
                cur = await self.kube.get(kind, w.namespace, w.name)
                if _labels(cur).get(MANAGED_BY) != MANAGER:
                    return self._refused(w, "the Service is not the operator's (a user's of that name)")
                if w.uid and _map(cur.get("metadata")).get("uid") != w.uid:
                    return self._result(
                        w, WriteResult(ok=False, code=409, reason="Conflict", message="uid changed")
                    )
            if w.op == "create":
                out = await self.kube.create(kind, w.namespace, w.obj)
            elif w.op == "patch":
                body = {
                    **w.obj,
                    "metadata": {**_map(w.obj.get("metadata")), **({"uid": w.uid} if w.uid else {})},
                }
                out = await self.kube.patch(kind, w.namespace, w.name, body)
            elif w.op == "delete":
                out = await self.kube.delete(kind, w.namespace, w.name, w.uid)
            else:
                body = {**w.obj, **({"metadata": {"uid": w.uid}} if w.uid else {})}
                out = await self.kube.patch_status(kind, w.namespace, w.name, body)
        except ApiStatusError as e:
            return self._result(w, WriteResult(ok=False, code=e.code, reason=e.reason, message=e.message))
        except Exception as e:
            return self._result(w, WriteResult(ok=False, code=500, reason="Error", message=repr(e)))
        rv = str(_map(out.get("metadata")).get("resourceVersion", ""))
        return self._result(w, WriteResult(ok=True, resource_version=rv))

    def _refused(self, w: ObjectWrite, why: str) -> WriteResult:
        log.warning("write %s %s %s/%s refused: %s", w.op, w.kind, w.namespace, w.name, why)
        return self._result(w, WriteResult(ok=False, code=403, reason="Forbidden", message=why))

    def _result(self, w: ObjectWrite, r: WriteResult) -> WriteResult:
        self.metrics.object_writes.labels(op=w.op, result="applied" if r.ok else str(r.code)).inc()
        return r


async def serve_writes(bus: Bus, applier: WriteApplier, active: Callable[[], bool]) -> Any:
    """Subscribe to ``k8s.write.*`` (call only while active; the caller unsubscribes on step-down)."""

    async def handle(w: ObjectWrite, msg: Msg) -> None:
        res = (
            await applier.apply(w, msg.subject)
            if active()
            else WriteResult(ok=False, code=503, reason="Unavailable", message="not the active watcher")
        )
        if msg.reply:
            await msg.respond(encode(res))

    return await bus.subscribe(subjects.K8S_WRITE_ALL, ObjectWrite, handle)
