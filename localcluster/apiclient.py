"""A small synchronous client for the local Kubernetes-protocol API server (what the CLI uses).

Errors come back as :class:`ApiError` carrying the HTTP status and the ``Status`` message the
server sent, so the CLI can print what the server said.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from nodemesh.errors import NodemeshError
from nodemesh.kinds import Kind

__all__ = ["ApiClient", "ApiError", "BaseApiClient"]


class ApiError(NodemeshError):
    """The API server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BaseApiClient:
    """The typed calls on Kubernetes REST paths, over a transport a subclass provides: ``request``
    (one JSON call; ``ApiError`` on failure) and ``_watch_lines`` (a watch stream's lines). The
    local API server's client and the kubeconfig client (meshctl/kubeclient.py) differ only there."""

    base = ""

    def request(self, method: str, path: str, body: Any = None) -> Any:
        raise NotImplementedError

    def _watch_lines(self, path: str) -> Iterator[bytes]:
        raise NotImplementedError

    # --- typed helpers --------------------------------------------------------------------------
    def get(self, kind: Kind, name: str, namespace: str = "") -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", kind.path(namespace, name))
            return obj
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list_with_version(
        self, kind: Kind, namespace: str = "", label_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """The items and the list's resourceVersion (where a watch resumes)."""
        path = kind.path(namespace if kind.namespaced else "")
        if label_selector:
            path += "?" + urllib.parse.urlencode({"labelSelector": label_selector})
        out = self.request("GET", path)
        items: list[dict[str, Any]] = list((out or {}).get("items") or [])
        for item in items:
            # A List's items omit apiVersion/kind in Kubernetes; put them back for printing.
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items, str(((out or {}).get("metadata") or {}).get("resourceVersion", ""))

    def list(self, kind: Kind, namespace: str = "", label_selector: str = "") -> list[dict[str, Any]]:
        return self.list_with_version(kind, namespace, label_selector)[0]

    def watch(
        self, kind: Kind, namespace: str = "", label_selector: str = "", resource_version: str = ""
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) pairs of a watch from ``resource_version``, until the server ends it."""
        q = {"watch": "1", "allowWatchBookmarks": "false"}
        if label_selector:
            q["labelSelector"] = label_selector
        if resource_version:
            q["resourceVersion"] = resource_version
        path = kind.path(namespace if kind.namespaced else "") + "?" + urllib.parse.urlencode(q)
        for line in self._watch_lines(path):
            if not line.strip():
                continue
            ev = json.loads(line)
            obj = ev.get("object") or {}
            if ev.get("type") == "ERROR":
                raise ApiError(int(obj.get("code") or 0), str(obj.get("message") or "watch error"))
            if ev.get("type") == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", kind.api_version)
            obj.setdefault("kind", kind.kind)
            yield str(ev.get("type")), obj

    def create(self, kind: Kind, obj: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", kind.path(namespace), obj)
        return out

    def replace(self, kind: Kind, obj: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        out: dict[str, Any] = self.request("PUT", kind.path(namespace, obj["metadata"]["name"]), obj)
        return out

    def delete(self, kind: Kind, name: str, namespace: str = "") -> bool:
        """True if deleted, False if it did not exist."""
        try:
            self.request("DELETE", kind.path(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True


class ApiClient(BaseApiClient):
    def __init__(self, base_url: str, timeout: float = 15.0, token: str = "") -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token  # the local API server's bearer token (<data-dir>/api/token)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            message = raw.decode(errors="replace").strip()
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict) and parsed.get("message"):
                    message = str(parsed["message"])
            except ValueError:
                pass
            raise ApiError(e.code, message or e.reason) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(0, f"cannot reach the API server at {self.base}: {e}") from None
        return json.loads(raw) if raw else None

    def _watch_lines(self, path: str) -> Iterator[bytes]:
        req = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace").strip() or e.reason) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(0, f"cannot reach the API server at {self.base}: {e}") from None
        with resp:
            yield from resp
