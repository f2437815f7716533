"""Kubernetes object events (watcher → stream K8S), status patches (services → watcher) and the
operator's object writes (operator → watcher, request/reply)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["ObjectEvent", "ObjectWrite", "StatusPatch", "Synced", "WriteResult"]


class ObjectEvent(msgspec.Struct, kw_only=True):
    """The current state of one Kubernetes object, or its deletion.

    Published on ``subjects.k8s_object(kind, namespace, name)``. The K8S stream keeps one message per
    subject, so replaying the stream yields the full current state; a ``delete`` is a tombstone.
    ``obj`` is the object as the API returned it (a JSON-shaped dict, status included).
    """

    type: Literal["upsert", "delete"]
    kind: str  # the Kubernetes kind as spelled by the API: "Pod", "HTTPRoute", …
    api_version: str
    namespace: str  # "" for cluster-scoped kinds
    name: str
    uid: str = ""
    resource_version: str = ""
    obj: dict[str, Any] = msgspec.field(default_factory=dict)
    watcher: str = ""  # id of the watcher instance that published it


class Synced(msgspec.Struct, kw_only=True):
    """Published on ``k8s.synced`` after the active watcher's initial list of every kind.

    ``stream_seq`` is the K8S stream's last sequence when the list completed: a consumer that has
    applied every message up to it has the full state.
    """

    watcher: str
    epoch: int  # increases with every (re)list by any watcher
    stream_seq: int
    kinds: list[str] = msgspec.field(default_factory=list)


class StatusPatch(msgspec.Struct, kw_only=True):
    """A status update one service asks the watcher to write to the API (status subresource).

    ``status`` replaces the fields it names at the top of ``.status`` (a JSON merge patch).
    ``field_manager`` names the writer (``nodemesh-xds``, ``nodemesh-datapath``) for logs.
    """

    kind: str
    api_version: str
    namespace: str
    name: str
    status: dict[str, Any]
    field_manager: str = ""
    # Only apply if the object still has this uid (guards against a recreated object); "" = any.
    uid: str = ""


class ObjectWrite(msgspec.Struct, kw_only=True):
    """One write the operator asks the active watcher to make (``subjects.k8s_write``, request/reply).

    ``op``: ``create`` (``obj`` is the whole object), ``patch`` (``obj`` is a JSON merge patch of
    the object), ``delete``, or ``status`` (``obj`` is a merge patch of ``{"status": …}``). ``uid``
    is a precondition for patch, delete and status: the write is refused if the object was
    recreated in between. The watcher applies only what the operator may do (docs/operator.md):
    Services it manages, and the status of Services and LoadBalancer IP pools.
    """

    op: Literal["create", "patch", "delete", "status"]
    kind: str
    api_version: str
    namespace: str
    name: str
    obj: dict[str, Any] = msgspec.field(default_factory=dict)
    uid: str = ""
    field_manager: str = ""


class WriteResult(msgspec.Struct, kw_only=True):
    """The watcher's answer to an :class:`ObjectWrite`: ``code`` is the API's HTTP status (or 403
    when the watcher refused it itself), ``reason``/``message`` say why it failed."""

    ok: bool
    code: int = 200
    reason: str = ""
    message: str = ""
    resource_version: str = ""
