"""Small helpers over JSON-shaped Kubernetes objects, shared by the operator's controllers."""

from __future__ import annotations

from typing import Any

__all__ = [
    "FIELD_MANAGER",
    "MANAGED_BY",
    "MANAGER",
    "as_list",
    "as_map",
    "controlled_by",
    "creation_key",
    "managed",
    "owner_ref",
    "with_allocated_node_ports",
]

#: The label on every Service the operator creates; the watcher lets it change only those.
MANAGED_BY = "nodemesh.io/managed-by"
MANAGER = "nodemesh-operator"
FIELD_MANAGER = "nodemesh-operator"


def as_map(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (malformed input reads as absent)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def managed(obj: dict[str, Any]) -> bool:
    return as_map(as_map(obj.get("metadata")).get("labels")).get(MANAGED_BY) == MANAGER


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    m = as_map(owner.get("metadata"))
    return {
        "apiVersion": owner.get("apiVersion", ""),
        "kind": owner.get("kind", ""),
        "name": m.get("name", ""),
        "uid": m.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = as_map(owner.get("metadata")).get("uid")
    return any(
        isinstance(r, dict) and r.get("uid") == uid and r.get("controller")
        for r in as_list(as_map(obj.get("metadata")).get("ownerReferences"))
    )


def creation_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """Oldest first, then by namespace and name: the order in which claims are honoured."""
    m = as_map(obj.get("metadata"))
    return (str(m.get("creationTimestamp", "")), str(m.get("namespace", "")), str(m.get("name", "")))


def with_allocated_node_ports(want: list[dict[str, Any]], cur: list[Any]) -> list[dict[str, Any]]:
    """``want`` (Service ports) with the nodePorts the API server already allocated in ``cur`` kept.

    A controller owns the fields it sets, not what the API server allocated: without this, every
    reconcile would write the ports without their nodePorts, the API server would allocate new
    ones, and the controller would see a difference again — an endless update loop.
    """
    allocated = {
        (p.get("name"), p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
        for p in cur
        if isinstance(p, dict) and isinstance(p.get("nodePort"), int)
    }
    out = []
    for p in want:
        key = (p.get("name"), p.get("port"), p.get("protocol", "TCP"))
        out.append({**p, "nodePort": allocated[key]} if key in allocated and "nodePort" not in p else p)
    return out
