"""Status conditions (metav1.Condition) and the Gateway ``Programmed`` merge used after an Envoy ACK."""

from __future__ import annotations

import copy
from typing import Any

from nodemesh.messages.k8s import StatusPatch

from .types import GatewayInfo

__all__ = ["EPOCH", "condition", "keep_transition_times", "with_programmed"]

EPOCH = "1970-01-01T00:00:00Z"


def condition(ctype: str, ok: bool, reason: str, message: str, generation: int, now: str) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now or EPOCH,
    }


def keep_transition_times(
    new: list[dict[str, Any]], old: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Keep the previous lastTransitionTime of conditions whose status did not change (as the spec asks)."""
    prev = {c.get("type"): c for c in old or [] if isinstance(c, dict)}
    for c in new:
        o = prev.get(c["type"])
        if o is not None and o.get("status") == c["status"] and o.get("lastTransitionTime"):
            c["lastTransitionTime"] = o["lastTransitionTime"]
    return new


def with_programmed(
    patch: StatusPatch,
    info: GatewayInfo,
    programmed: bool,
    reason: str = "",
    message: str = "",
    now: str = "",
) -> StatusPatch:
    """A copy of a Gateway's status patch with ``Programmed`` on the Gateway and on each listener.

    Call it with ``programmed=True`` once every node's Envoy ACKed the listeners in
    ``info.envoy_listeners``; with False and the NACK detail as ``message`` (reason ``Invalid``) when
    one NACKed, or reason ``Pending`` while waiting. Without an address the Gateway is
    Programmed=False/AddressNotAssigned whatever the ACK says.
    """
    status = copy.deepcopy(patch.status)
    gen = info.generation
    if not info.address:
        ok, why, msg = False, "AddressNotAssigned", "No address allocated yet"
    elif not info.accepted:
        ok, why, msg = False, "Invalid", "Gateway is not accepted"
    elif programmed:
        ok, why, msg = True, "Programmed", message or "Gateway successfully reconciled"
    else:
        ok, why, msg = False, reason or "Pending", message or "Waiting for Envoy to accept the configuration"
    conds = [c for c in status.get("conditions", []) if c.get("type") != "Programmed"]
    conds.append(condition("Programmed", ok, why, msg, gen, now))
    status["conditions"] = conds
    for lst in status.get("listeners", []):
        valid = info.listeners.get(lst.get("name", ""), False)
        lconds = [c for c in lst.get("conditions", []) if c.get("type") != "Programmed"]
        if not valid:
            lconds.append(condition("Programmed", False, "Invalid", "Listener is invalid", gen, now))
        else:
            lconds.append(condition("Programmed", ok, why, "Listener Programmed" if ok else msg, gen, now))
        lst["conditions"] = lconds
    return StatusPatch(
        kind=patch.kind,
        api_version=patch.api_version,
        namespace=patch.namespace,
        name=patch.name,
        status=status,
        field_manager=patch.field_manager,
        uid=patch.uid,
    )
