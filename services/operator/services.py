"""Desired LoadBalancer Services against the cluster's: the creates, patches and deletes to make.

The operator owns the Services it labelled ``nodemesh.io/managed-by: nodemesh-operator``: it creates
them, keeps the fields it sets (labels and annotations it sets, owner, type, ports), and deletes the
ones no Gateway or Ingress needs any more. A Service of the same name it did not create (a user's)
is left alone. Fields the API server fills in (clusterIP, nodePorts, defaults) are not fought over.
"""

from __future__ import annotations

from typing import Any

from nodemesh.messages.k8s import ObjectWrite
from services.operator.lbipam import IPS_ANNOTATION
from services.operator.objects import (
    FIELD_MANAGER,
    as_list,
    as_map,
    managed,
    with_allocated_node_ports,
)

__all__ = ["service_writes"]


def _ports_key(ports: list[Any]) -> list[tuple[Any, ...]]:
    """Ports as the API server stores them (protocol and targetPort defaulted)."""
    out = []
    for p in ports:
        if not isinstance(p, dict):
            continue
        out.append(
            (
                p.get("name"),
                p.get("port"),
                p.get("protocol", "TCP"),
                p.get("targetPort", p.get("port")),
                p.get("nodePort"),
            )
        )
    return out


def _patch(want: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings ``cur`` to ``want`` in the fields the operator owns ({} if none)."""
    wm, cm = want["metadata"], as_map(cur.get("metadata"))
    meta: dict[str, Any] = {}
    cur_labels = as_map(cm.get("labels"))
    labels = {k: v for k, v in wm["labels"].items() if cur_labels.get(k) != v}
    if labels:
        meta["labels"] = labels
    cur_ann = as_map(cm.get("annotations"))
    want_ann = as_map(wm.get("annotations"))
    ann: dict[str, Any] = {k: v for k, v in want_ann.items() if cur_ann.get(k) != v}
    if IPS_ANNOTATION in cur_ann and IPS_ANNOTATION not in want_ann:
        ann[IPS_ANNOTATION] = None  # merge patch: null removes it
    if ann:
        meta["annotations"] = ann
    want_owners = wm.get("ownerReferences") or []
    if want_owners != (cm.get("ownerReferences") or []):
        meta["ownerReferences"] = want_owners or None
    patch: dict[str, Any] = {}
    if meta:
        patch["metadata"] = meta
    cs = as_map(cur.get("spec"))
    ports = with_allocated_node_ports(want["spec"]["ports"], as_list(cs.get("ports")))
    if cs.get("type") != want["spec"]["type"] or _ports_key(ports) != _ports_key(as_list(cs.get("ports"))):
        patch["spec"] = {"type": want["spec"]["type"], "ports": ports}
    return patch


def service_writes(
    desired: list[dict[str, Any]], services: list[dict[str, Any]], namespaces: set[str]
) -> list[ObjectWrite]:
    """The writes that make the cluster's managed Services equal ``desired``."""
    have = {
        (as_map(s.get("metadata")).get("namespace", ""), as_map(s.get("metadata")).get("name", "")): s
        for s in services
    }
    writes: list[ObjectWrite] = []
    wanted: set[tuple[str, str]] = set()
    for want in desired:
        ns, name = want["metadata"]["namespace"], want["metadata"]["name"]
        wanted.add((ns, name))
        if ns not in namespaces:
            continue  # e.g. the shared namespace removed by a user: nothing to create it in
        cur = have.get((ns, name))
        if cur is None:
            writes.append(
                ObjectWrite(
                    op="create",
                    kind="Service",
                    api_version="v1",
                    namespace=ns,
                    name=name,
                    obj=want,
                    field_manager=FIELD_MANAGER,
                )
            )
            continue
        if not managed(cur):
            continue  # a user's Service of that name: leave it alone
        patch = _patch(want, cur)
        if patch:
            writes.append(
                ObjectWrite(
                    op="patch",
                    kind="Service",
                    api_version="v1",
                    namespace=ns,
                    name=name,
                    obj=patch,
                    uid=str(as_map(cur.get("metadata")).get("uid", "")),
                    field_manager=FIELD_MANAGER,
                )
            )
    for (ns, name), cur in sorted(have.items()):
        if managed(cur) and (ns, name) not in wanted:
            writes.append(
                ObjectWrite(
                    op="delete",
                    kind="Service",
                    api_version="v1",
                    namespace=ns,
                    name=name,
                    uid=str(as_map(cur.get("metadata")).get("uid", "")),
                    field_manager=FIELD_MANAGER,
                )
            )
    return writes
