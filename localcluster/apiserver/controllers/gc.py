"""Garbage collection: dependents whose owners are all gone, and objects of deleted namespaces."""

from __future__ import annotations

import logging

from localcluster.apiserver.errors import ApiError
from localcluster.apiserver.store import Store
from nodemesh.kinds import KINDS

__all__ = ["reconcile_gc"]

log = logging.getLogger("localcluster.apiserver.gc")


def reconcile_gc(store: Store) -> int:
    writes = 0
    # Repeat until stable so a chain (Deployment → ReplicaSet → Pod) goes in one pass.
    while True:
        uids = store.uids()
        namespaces = {o["metadata"]["name"] for o in store.objects("Namespace")}
        doomed = []
        for k in KINDS:
            for obj in store.objects(k.kind):
                meta = obj["metadata"]
                owners = [r.get("uid") for r in meta.get("ownerReferences") or []]
                if owners and not any(u in uids for u in owners):
                    doomed.append((k, meta))
                elif k.namespaced and meta.get("namespace") not in namespaces:
                    doomed.append((k, meta))
        if not doomed:
            return writes
        for k, meta in doomed:
            try:
                store.delete(k, meta.get("namespace", ""), meta["name"])
                writes += 1
                log.info("garbage-collected %s %s/%s", k.kind, meta.get("namespace", ""), meta["name"])
            except ApiError:
                pass
