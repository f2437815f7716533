"""The Kubernetes API adapter: list, watch and status patches with the ``kubernetes`` client.

The client is blocking (urllib3), so a list runs in a worker thread and each watch stream in a
daemon thread that feeds decoded lines into an asyncio queue. Requests go through
``ApiClient.param_serialize``/``call_api`` with the kind's REST path, so one code path serves
every kind, CRDs included, with the client's authentication (kubeconfig, in-cluster token, or a
plain ``--api-url`` for the local API server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.watch.watch import iter_resp_lines

from nodemesh.kinds import Kind

__all__ = ["ApiStatusError", "KubeClient"]

log = logging.getLogger("nodemesh.watcher.kube")


class ApiStatusError(Exception):
    """A non-2xx answer (or a watch ERROR event) with the API's Status fields."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def from_body(cls, code: int, body: bytes | str | dict[str, Any]) -> ApiStatusError:
        status: Any = body
        if not isinstance(body, dict):
            try:
                status = json.loads(body)
            except (ValueError, TypeError):
                status = {}
        if not isinstance(status, dict):
            status = {}
        return cls(
            int(status.get("code") or code), str(status.get("reason", "")), str(status.get("message", ""))
        )


class KubeClient:
    """One API client for every kind."""

    def __init__(
        self, configuration: k8s.Configuration, *, request_timeout: float = 30.0, page_size: int = 500
    ) -> None:
        self.page_size = page_size
        # One connection per concurrent watch plus a few for lists and patches.
        configuration.connection_pool_maxsize = 64
        self.api = k8s.ApiClient(configuration)
        self.request_timeout = request_timeout

    @classmethod
    def from_settings(
        cls,
        api_url: str = "",
        kubeconfig: str = "",
        in_cluster: bool = False,
        page_size: int = 500,
        token: str = "",
    ) -> KubeClient:
        """``token``: a bearer token for ``api_url`` (the local API server's, docs/security.md)."""
        cfg = k8s.Configuration()
        if api_url:
            cfg.host = api_url.rstrip("/")
            if token:
                cfg.api_key = {"BearerToken": token}
                cfg.api_key_prefix = {"BearerToken": "Bearer"}
        elif in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None, client_configuration=cfg
            )
        return cls(cfg, page_size=page_size)

    def close(self) -> None:
        try:
            self.api.rest_client.pool_manager.clear()
        except Exception as e:
            log.debug("closing pool: %s", e)

    # --- blocking core ------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "",
        timeout: Any = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, hdrs, data, post, _request_timeout=timeout or self.request_timeout)
        return resp.response  # the streaming urllib3 response

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self._request(method, path, **kw)
        try:
            data = resp.data
        finally:
            resp.release_conn()
        if not 200 <= resp.status < 300:
            raise ApiStatusError.from_body(resp.status, data)
        out: dict[str, Any] = json.loads(data)
        return out

    def list_sync(self, kind: Kind) -> tuple[list[dict[str, Any]], str]:
        """Every object, in pages of ``page_size`` (``limit``/``continue``); a page whose continue
        token expired (410) restarts the list, as client-go's pager does."""
        for _ in range(5):
            items: list[dict[str, Any]] = []
            query = {"limit": str(self.page_size)}
            rv = ""
            try:
                while True:
                    body = self._json("GET", kind.path(), query=query)
                    meta = body.get("metadata") or {}
                    rv = rv or str(meta.get("resourceVersion", ""))
                    page = body.get("items")
                    # Non-objects cannot be keyed; the caller skips other malformed items.
                    if isinstance(page, list):
                        items.extend(i for i in page if isinstance(i, dict))
                    token = meta.get("continue")
                    if not token:
                        break
                    query = {"limit": str(self.page_size), "continue": str(token)}
            except ApiStatusError as e:
                if e.code == 410 and "continue" in query:
                    log.info("list of %s: continue token expired, restarting", kind.kind)
                    continue
                raise
            for item in items:  # list items omit kind/apiVersion; events carry them
                item.setdefault("kind", kind.kind)
                item.setdefault("apiVersion", kind.api_version)
            return items, rv
        raise ApiStatusError(410, "Expired", f"list of {kind.kind} kept expiring")

    # --- async API ----------------------------------------------------------------------------
    async def list(self, kind: Kind) -> tuple[list[dict[str, Any]], str]:
        """Every object of ``kind`` and the list's resourceVersion."""
        return await asyncio.to_thread(self.list_sync, kind)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        """One object (:class:`ApiStatusError` 404 if it does not exist)."""
        return await asyncio.to_thread(self._json, "GET", kind.path(namespace, name))

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of ``…/status``."""
        path = kind.path(namespace, name) + "/status"
        return await asyncio.to_thread(
            self._json, "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def create(self, kind: Kind, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """POST a new object."""
        return await asyncio.to_thread(self._json, "POST", kind.path(namespace), body=obj)

    async def patch(self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the object (a ``metadata.uid`` in it is a precondition)."""
        return await asyncio.to_thread(
            self._json,
            "PATCH",
            kind.path(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str = "") -> dict[str, Any]:
        """DELETE, with ``preconditions.uid`` when ``uid`` is given (409 if the object was recreated)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid else None
        return await asyncio.to_thread(self._json, "DELETE", kind.path(namespace, name), body=body)

    async def watch(self, kind: Kind, resource_version: str, timeout_s: int) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) from ``resource_version`` until the server ends the
        stream. A non-200 answer raises :class:`ApiStatusError`; ERROR events are yielded as-is."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        holder: dict[str, Any] = {}
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed (process shutting down): nobody is listening
                stop.set()

        def reader() -> None:
            try:
                resp = self._request("GET", kind.path(), query, timeout=(10.0, timeout_s + 60.0))
                holder["resp"] = resp
                if resp.status != 200:
                    put(("status", ApiStatusError.from_body(resp.status, resp.data)))
                    return
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    if stop.is_set():
                        return
                    if line.strip():
                        put(("event", line))
            except Exception as e:
                if not stop.is_set():
                    put(("error", e))
            finally:
                put(("end", None))

        thread = threading.Thread(target=reader, name=f"watch-{kind.plural}", daemon=True)
        thread.start()
        try:
            while True:
                typ, val = await queue.get()
                if typ == "end":
                    return
                if typ in ("status", "error"):
                    raise val
                try:
                    ev = json.loads(val)
                except ValueError:
                    log.warning("undecodable watch line for %s dropped", kind.kind)
                    continue
                if isinstance(ev, dict):
                    yield ev
        finally:
            stop.set()
            resp = holder.get("resp")
            if resp is not None:
                try:
                    resp.shutdown()  # unblocks the reader thread's read
                except Exception as e:
                    log.debug("shutdown of watch response: %s", e)
