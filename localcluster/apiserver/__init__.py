"""The local Kubernetes-protocol API server: local mode's manifest store.

It serves every kind in :mod:`nodemesh.kinds` on the real REST paths with kube-apiserver's
list/watch semantics (one global resourceVersion, chunked watch streams, bookmarks, 410 Expired),
persists objects in sqlite under ``<data-dir>/api``, and runs the controllers
kube-controller-manager would (:mod:`localcluster.apiserver.controllers`). The watcher's Kubernetes
path is tested against it, since no kube-apiserver can be installed here.
"""

from __future__ import annotations

__all__ = ["LocalApi"]


def __getattr__(name: str) -> object:
    if name == "LocalApi":
        from localcluster.apiserver.app import LocalApi

        return LocalApi
    raise AttributeError(name)
