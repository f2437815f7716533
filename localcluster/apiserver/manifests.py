"""``--manifests DIR``: keep the store equal to the YAML files in a directory.

Every second the directory's files (``*.yaml``, ``*.yml``, ``*.json``, recursively) are compared by
(mtime, size) with what was applied last. A changed file is parsed and checked as a whole first;
a file with any bad document is reported (file, document index, field) and nothing from it is
applied. A good file's objects are created or updated; objects it no longer contains — or all of
them, when the file is deleted — are deleted. What each file created is recorded in the store's
database, so a file removed while the server was down is handled at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from localcluster.apiserver.errors import ApiError
from localcluster.apiserver.store import Store
from nodemesh.errors import ManifestError
from nodemesh.kinds import Kind, by_kind
from validation import validate_object

__all__ = ["ManifestDir", "parse_manifest"]

log = logging.getLogger("localcluster.apiserver.manifests")
ObjRef = tuple[str, str, str]  # kind, namespace, name
_SUFFIXES = (".yaml", ".yml", ".json")


def parse_manifest(source: str, text: str) -> list[tuple[Kind, dict[str, Any]]]:
    """Every document of a file as (Kind, object); ManifestError names the first bad one."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(source, 0, where, f"malformed YAML: {e}") from e
    out: list[tuple[Kind, dict[str, Any]]] = []
    index = 0
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            items = doc["items"]
        else:
            items = [doc]
        for item in items:
            out.append(_check(source, index, item))
            index += 1
    return out


def _check(source: str, index: int, doc: Any) -> tuple[Kind, dict[str, Any]]:
    if not isinstance(doc, dict):
        raise ManifestError(source, index, "", "a document must be a mapping")
    kind_name = doc.get("kind")
    try:
        kind = by_kind(str(kind_name))
    except KeyError as e:
        raise ManifestError(source, index, "kind", f"unknown kind {kind_name!r}") from e
    if doc.get("apiVersion") != kind.api_version:
        raise ManifestError(source, index, "apiVersion", f"{kind.kind} needs apiVersion {kind.api_version}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ManifestError(source, index, "metadata.name", "required")
    if kind.namespaced:
        meta.setdefault("namespace", "default")
    errors = list(validate_object(doc))
    if errors:
        raise ManifestError(source, index, "", "; ".join(errors))
    return kind, doc


class ManifestDir:
    def __init__(self, store: Store, directory: str | Path, *, interval: float = 1.0) -> None:
        self.store = store
        self.dir = Path(directory)
        self.interval = interval
        self.errors: dict[str, str] = {}  # file → last error, for logs and tests
        self._task: asyncio.Task[None] | None = None
        store._db.execute(
            "CREATE TABLE IF NOT EXISTS manifest_files (path TEXT PRIMARY KEY, stamp TEXT, objects TEXT)"
        )

    async def start(self) -> None:
        self.sync()
        self._task = asyncio.create_task(self._loop(), name="localapi-manifests")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sync()
            except Exception:
                log.exception("manifest sync failed")

    def _recorded(self) -> dict[str, tuple[str, list[ObjRef]]]:
        rows = self.store._db.execute("SELECT path, stamp, objects FROM manifest_files").fetchall()
        return {p: (s, [(o[0], o[1], o[2]) for o in json.loads(objs)]) for p, s, objs in rows}

    def sync(self) -> None:
        """One comparison of the directory with what was applied."""
        recorded = self._recorded()
        files = {}
        if self.dir.is_dir():
            for f in sorted(self.dir.rglob("*")):
                if f.suffix in _SUFFIXES and f.is_file():
                    st = f.stat()
                    files[str(f)] = f"{st.st_mtime_ns}:{st.st_size}"
        for path, (_, objs) in recorded.items():
            if path not in files:
                log.info("manifest %s removed: deleting %d objects", path, len(objs))
                self._delete(objs)
                self.store._db.execute("DELETE FROM manifest_files WHERE path = ?", (path,))
                self.errors.pop(path, None)
        for path, stamp in files.items():
            if recorded.get(path, ("", []))[0] != stamp:
                self._apply_file(path, stamp, recorded.get(path, ("", []))[1])

    def _apply_file(self, path: str, stamp: str, previous: list[ObjRef]) -> None:
        try:
            docs = parse_manifest(path, Path(path).read_text())
        except (ManifestError, OSError, UnicodeDecodeError) as e:
            log.error("manifest not applied: %s", e)
            self.errors[path] = str(e)
            self._record(path, stamp, previous)  # keep what it applied before; retry when it changes
            return
        self.errors.pop(path, None)
        # Namespaces first, so objects in a namespace the same file creates can be created.
        docs.sort(key=lambda d: d[0].kind != "Namespace")
        applied: list[ObjRef] = []
        for kind, obj in docs:
            meta = obj["metadata"]
            ref = (kind.kind, str(meta.get("namespace", "")) if kind.namespaced else "", str(meta["name"]))
            try:
                self.store.apply(kind, obj)
                applied.append(ref)
            except ApiError as e:
                log.error("manifest %s: %s %s/%s: %s", path, ref[0], ref[1], ref[2], e.message)
                self.errors[path] = e.message
        self._delete([r for r in previous if r not in applied])
        self._record(path, stamp, applied)

    def _record(self, path: str, stamp: str, objs: list[ObjRef]) -> None:
        self.store._db.execute(
            "INSERT OR REPLACE INTO manifest_files (path, stamp, objects) VALUES (?, ?, ?)",
            (path, stamp, json.dumps(objs)),
        )

    def _delete(self, objs: list[ObjRef]) -> None:
        for kind, ns, name in objs:
            try:
                self.store.delete(by_kind(kind), ns, name)
            except (ApiError, KeyError):
                pass
