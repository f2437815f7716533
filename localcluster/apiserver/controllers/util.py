"""Helpers shared by the local controllers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from localcluster.apiserver.store import Store, clone
from nodemesh.kinds import by_kind

__all__ = ["as_map", "condition_true", "controlled_by", "guarded", "owner_ref", "set_status", "write"]

log = logging.getLogger("localcluster.apiserver.controllers")


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    m = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": m["name"],
        "uid": m["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(
        r.get("uid") == uid and r.get("controller") for r in obj["metadata"].get("ownerReferences") or []
    )


def condition_true(obj: dict[str, Any], typ: str) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == typ:
            return str(c.get("status")) == "True"
    return False


def write(store: Store, obj: dict[str, Any]) -> int:
    """Replace ``obj`` (a modified clone of a stored object); 1 if it changed anything."""
    before = store.rv
    store.update(by_kind(obj["kind"]), obj, validate=False)
    return int(store.rv != before)


def set_status(store: Store, obj: dict[str, Any], status: dict[str, Any]) -> int:
    """Write ``status`` (merged over the current one) through the status subresource if it differs."""
    cur = obj.get("status") or {}
    merged = {**cur, **status}
    if merged == cur:
        return 0
    new = clone(obj)
    new["status"] = merged
    before = store.rv
    store.update(by_kind(obj["kind"]), new, status_only=True, validate=False)
    return int(store.rv != before)


def guarded(fn: Callable[..., int], store: Store, obj: dict[str, Any], *args: Any) -> int:
    """Reconcile one object; a malformed object is logged and skipped, never stalls the others."""
    try:
        return fn(store, obj, *args)
    except Exception as e:
        m = obj.get("metadata") or {}
        log.warning(
            "%s: cannot reconcile %s %s/%s: %r",
            fn.__name__,
            obj.get("kind"),
            m.get("namespace", ""),
            m.get("name", ""),
            e,
        )
        return 0


def as_map(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (malformed input reads as absent)."""
    return value if isinstance(value, dict) else {}


def with_allocated_node_ports(want: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """``want`` (a Service spec) with the nodePorts admission already allocated in ``cur`` kept.

    A controller owns the fields it sets, not what the API server allocated: without this, every
    reconcile would write the ports without their nodePorts, admission would put them back, and the
    controller would see a difference again — an endless update loop.
    """
    allocated = {
        (p.get("name"), p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
        for p in cur.get("ports") or []
        if isinstance(p, dict) and isinstance(p.get("nodePort"), int)
    }
    ports = []
    for p in want.get("ports") or []:
        key = (p.get("name"), p.get("port"), p.get("protocol", "TCP"))
        ports.append({**p, "nodePort": allocated[key]} if key in allocated and "nodePort" not in p else p)
    return {**want, "ports": ports} if "ports" in want else want
