"""The local API server's object store: sqlite under ``<data-dir>/api``, one global resourceVersion.

Every write is one sqlite transaction that stores the object and the new resourceVersion, so a
restart loses nothing. Reads are served from an in-memory copy. Each change becomes a
:class:`WatchEvent` kept in a bounded history: a watch from a resourceVersion older than the
oldest kept event is answered with 410 Expired, exactly like kube-apiserver after an etcd
compaction. The store is synchronous and single-threaded (the server's event loop), so a write and
the notification of its listeners are atomic with respect to every watch.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import logging
import os
import re
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from localcluster.apiserver.admission import admit
from localcluster.apiserver.errors import ApiError, already_exists, conflict, expired, invalid, not_found
from nodemesh.kinds import KINDS, Kind
from validation import validate_object

__all__ = ["Store", "WatchEvent", "clone", "now", "random_suffix"]

log = logging.getLogger("localcluster.apiserver.store")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes' rand.String alphabet: no vowels (no words), no confusable 0/1/3.
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_FIELDS = ("uid", "creationTimestamp", "resourceVersion", "generation")


class WatchEvent(NamedTuple):
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


Listener = Callable[[WatchEvent], None]


def clone(obj: Any) -> Any:
    """A deep copy of a JSON-shaped value (faster than copy.deepcopy)."""
    return msgspec.json.decode(msgspec.json.encode(obj))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_ALPHANUMS) for _ in range(n))


def _validate_hook(obj: dict[str, Any]) -> list[str]:
    """Schema validation of every stored object (:mod:`validation`), as admission would."""
    try:
        return list(validate_object(obj))
    except Exception as e:  # a validator bug must not take the API server down
        log.warning("validation hook failed: %r", e)
        return []


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Store:
    """Objects of every kind in :data:`nodemesh.kinds.KINDS`, persisted in ``<dir>/store.db``."""

    def __init__(self, directory: str | Path, *, history: int = 10_000) -> None:
        # Owner only: the store holds every Secret (SQLite gives its -wal/-shm files the same mode).
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        db = Path(directory) / "store.db"
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(db, 0o600)
        self._db = sqlite3.connect(str(db), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (kind TEXT, namespace TEXT, name TEXT, body BLOB,"
            " PRIMARY KEY (kind, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._objs: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k.kind: {} for k in KINDS}
        for kind, ns, name, body in self._db.execute("SELECT kind, namespace, name, body FROM objects"):
            if kind not in self._objs:
                continue  # a kind this version no longer serves
            try:
                obj = msgspec.json.decode(body)
                _ = obj["metadata"]["uid"]  # a row without metadata is corrupt
            except (msgspec.DecodeError, KeyError, TypeError):
                log.error("skipping corrupt stored %s %s/%s", kind, ns, name)
                continue
            self._objs[kind][(ns, name)] = obj
        self.rv = int(self.get_meta("rv") or "0")
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=max(1, history))
        # Every event with rv > floor is in the history (after a restart: none older than now).
        self.floor = self.rv
        self._listeners: list[Listener] = []
        #: Pods' default not-ready/unreachable tolerations (admission.py); None: none added.
        self.default_toleration_seconds: int | None = None

    def close(self) -> None:
        self._db.close()

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- reads --------------------------------------------------------------------------------
    def peek(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object itself (do not mutate), or None."""
        return self._objs.get(kind, {}).get((namespace, name))

    def objects(self, kind: str, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Stored objects of a kind (do not mutate), in name order."""
        for (ns, _), obj in sorted(self._objs.get(kind, {}).items()):
            if namespace is None or ns == namespace:
                yield obj

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        obj = self.peek(kind.kind, namespace if kind.namespaced else "", name)
        if obj is None:
            raise not_found(kind.plural, kind.group, name)
        out: dict[str, Any] = clone(obj)
        return out

    def list(self, kind: Kind, namespace: str | None = None) -> tuple[builtins.list[dict[str, Any]], int]:
        items = [clone(o) for o in self.objects(kind.kind, namespace if kind.namespaced else None)]
        return items, self.rv

    def uids(self) -> set[str]:
        return {o["metadata"]["uid"] for objs in self._objs.values() for o in objs.values()}

    # --- watch --------------------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def events_after(self, rv: int) -> builtins.list[WatchEvent]:
        """Kept events newer than ``rv``; 410 Expired when history no longer reaches back to it."""
        if rv < self.floor:
            raise expired(rv, self.floor)
        return [e for e in self._history if e.rv > rv]

    def compact(self) -> None:
        """Forget the event history (what an etcd compaction does): older watches get 410."""
        self._history.clear()
        self.floor = self.rv

    # --- writes -------------------------------------------------------------------------------
    def create(
        self, kind: Kind, obj: dict[str, Any], *, keep_status: bool = False, validate: bool = True
    ) -> dict[str, Any]:
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(10):
                meta["name"] = f"{meta['generateName']}{random_suffix()}"
                if self.peek(kind.kind, meta.get("namespace", ""), meta["name"]) is None:
                    break
        name = str(meta.get("name") or "")
        ns = str(meta.get("namespace") or "") if kind.namespaced else ""
        self._check_names(kind, ns, name)
        self._check_meta(kind, meta)
        if not kind.namespaced:
            meta.pop("namespace", None)
        if self.peek(kind.kind, ns, name) is not None:
            raise already_exists(kind.plural, kind.group, name)
        for f in _SERVER_FIELDS:
            meta.pop(f, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        if kind.has_status and not keep_status:
            obj.pop("status", None)
        admit(kind, obj, None, self.objects("Service"), toleration_seconds=self.default_toleration_seconds)
        if validate:
            self._validate(kind, obj)
        return self._commit(kind, "ADDED", obj, None)

    def update(
        self, kind: Kind, obj: dict[str, Any], *, status_only: bool = False, validate: bool = True
    ) -> dict[str, Any]:
        """PUT semantics: replace the object (or only its status); a stale resourceVersion → 409."""
        obj = clone(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        name = str(meta.get("name") or "")
        ns = str(meta.get("namespace") or "") if kind.namespaced else ""
        old = self.peek(kind.kind, ns, name)
        if old is None:
            raise not_found(kind.plural, kind.group, name)
        om = old["metadata"]
        self._check_meta(kind, meta)
        rv = meta.get("resourceVersion")
        if rv and str(rv) != om["resourceVersion"]:
            raise conflict(
                kind.plural,
                kind.group,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if meta.get("uid") and meta["uid"] != om["uid"]:
            raise conflict(
                kind.plural,
                kind.group,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {om['uid']}",
            )
        if status_only:
            new: dict[str, Any] = clone(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            new["kind"], new["apiVersion"] = kind.kind, kind.api_version
            if not kind.namespaced:
                new["metadata"].pop("namespace", None)
            else:
                new["metadata"]["namespace"] = ns
            for f in _SERVER_FIELDS:
                if f in om:
                    new["metadata"][f] = om[f]
            if kind.has_status:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            if _spec_part(new) != _spec_part(old):
                new["metadata"]["generation"] = int(om.get("generation", 1)) + 1
        admit(kind, new, old, self.objects("Service"), toleration_seconds=self.default_toleration_seconds)
        if validate and not status_only:
            self._validate(kind, new)
        new["metadata"]["resourceVersion"] = om["resourceVersion"]
        if new == old:
            same: dict[str, Any] = clone(old)
            return same  # a no-op write changes nothing, not even the resourceVersion
        return self._commit(kind, "MODIFIED", new, old)

    def delete(self, kind: Kind, namespace: str, name: str, *, uid: str = "") -> dict[str, Any]:
        ns = namespace if kind.namespaced else ""
        old = self.peek(kind.kind, ns, name)
        if old is None:
            raise not_found(kind.plural, kind.group, name)
        if uid and old["metadata"]["uid"] != uid:
            raise conflict(kind.plural, kind.group, name, "Precondition failed: UID mismatch")
        gone: dict[str, Any] = clone(old)
        return self._commit(kind, "DELETED", gone, old)

    def apply(self, kind: Kind, obj: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """Create, or replace everything but status and server-owned metadata (``kubectl apply``-like)."""
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "") if kind.namespaced else ""
        cur = self.peek(kind.kind, ns, str(meta.get("name") or ""))
        if cur is None:
            return self.create(kind, obj, validate=validate)
        new = clone(obj)
        new["metadata"] = {**new.get("metadata", {}), "resourceVersion": cur["metadata"]["resourceVersion"]}
        return self.update(kind, new, validate=validate)

    # --- internals ----------------------------------------------------------------------------
    @staticmethod
    def _check_meta(kind: Kind, meta: dict[str, Any]) -> None:
        """The metadata shapes every reader relies on (selectors, controllers, GC)."""
        problems = []
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is not None and (
                not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
            ):
                problems.append((f"metadata.{field}", "Invalid value: must be a map of string to string"))
        refs = meta.get("ownerReferences")
        if refs is not None and (not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs)):
            problems.append(("metadata.ownerReferences", "Invalid value: must be a list of objects"))
        if problems:
            raise invalid(kind.kind, kind.group, str(meta.get("name", "")), problems)

    def _check_names(self, kind: Kind, ns: str, name: str) -> None:
        if not name:
            raise invalid(
                kind.kind,
                kind.group,
                name,
                [("metadata.name", "Required value: name or generateName is required")],
            )
        pattern = _DNS_LABEL if kind.kind == "Namespace" else _DNS_SUBDOMAIN
        if len(name) > 253 or not pattern.match(name):
            raise invalid(
                kind.kind,
                kind.group,
                name,
                [
                    (
                        "metadata.name",
                        f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower case '
                        "alphanumeric characters, '-' or '.'",
                    )
                ],
            )
        if kind.namespaced:
            if not ns:
                raise ApiError(400, "BadRequest", "the namespace of the object is required")
            if self.peek("Namespace", "", ns) is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{ns}" not found',
                    {"name": ns, "kind": "namespaces"},
                )

    @staticmethod
    def _validate(kind: Kind, obj: dict[str, Any]) -> None:
        errors = _validate_hook(obj)
        if errors:
            causes = []
            for e in errors:
                field, sep, msg = e.partition(": ")
                causes.append((field, msg) if sep and " " not in field else ("", e))
            raise invalid(kind.kind, kind.group, obj["metadata"].get("name", ""), causes)

    def _commit(
        self, kind: Kind, typ: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = (meta.get("namespace", "") if kind.namespaced else "", meta["name"])
        self._db.execute("BEGIN")
        try:
            if typ == "DELETED":
                self._db.execute(
                    "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (kind.kind, *key)
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO objects (kind, namespace, name, body) VALUES (?, ?, ?, ?)",
                    (kind.kind, *key, msgspec.json.encode(obj)),
                )
            self.set_meta("rv", str(self.rv))
            self._db.execute("COMMIT")
        except Exception:
            self._db.execute("ROLLBACK")
            self.rv -= 1
            raise
        if typ == "DELETED":
            self._objs[kind.kind].pop(key, None)
        else:
            self._objs[kind.kind][key] = obj
        ev = WatchEvent(self.rv, typ, kind.kind, obj, old)
        if len(self._history) == self._history.maxlen:
            self.floor = self._history[0].rv
        self._history.append(ev)
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                log.exception("store listener failed")
        out: dict[str, Any] = clone(obj)
        return out

    def all_objects(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for kind, objs in self._objs.items():
            for obj in objs.values():
                yield kind, obj
