"""The local API server's HTTP surface: the Kubernetes REST protocol over :class:`Store`.

Paths are the real ones (``/api/v1/namespaces/ns/pods/name``, ``/apis/<group>/<version>/…``,
``…/status``). List returns ``<Kind>List``; ``?watch=1`` streams chunked JSON lines
``{"type": …, "object": …}`` with BOOKMARKs (when ``allowWatchBookmarks``) and an ERROR event
carrying a 410 Expired Status for a resourceVersion older than the kept history. Every error is
a ``Status`` object; malformed input never takes the server down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from localcluster.apiserver.errors import ApiError
from localcluster.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from localcluster.apiserver.selectors import SelectorError, field_selector, label_selector
from localcluster.apiserver.store import Store
from localcluster.apiserver.watch import WatchHub
from nodemesh import __version__
from nodemesh.kinds import KINDS, Kind

__all__ = ["MAX_BODY_BYTES", "ApiServer", "Route", "parse_path"]

log = logging.getLogger("localcluster.apiserver.server")

MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's request size limit
SNAPSHOT_TTL_S = 60.0  # how long a paginated list's continue token stays valid
_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
_PATCHES: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
    "application/json-patch+json": json_patch,
}


class Route:
    """A parsed resource path."""

    def __init__(self, kind: Kind, namespace: str, name: str, subresource: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.subresource = subresource


def parse_path(path: str) -> Route | None:
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    ns = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
        ns, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3 or (len(rest) == 3 and rest[2] != "status"):
        return None
    kind = _BY_PATH.get((group, version, rest[0]))
    if kind is None or (ns and not kind.namespaced):
        return None
    return Route(kind, ns, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else "")


#: Health checks and the version answer without a token (the supervisor's probe; as Kubernetes'
#: system:public-info-viewer, they disclose no object).
_UNAUTHENTICATED = frozenset({"/healthz", "/readyz", "/livez", "/version"})


def _error(e: ApiError) -> web.Response:
    return web.json_response(e.status(), status=e.code)


class ApiServer:
    """aiohttp application serving :class:`Store`."""

    def __init__(
        self, store: Store, *, bookmark_interval: float = 5.0, watch_queue: int = 10_000, token: str = ""
    ) -> None:
        self.store = store
        #: Bearer token every request but the health checks must carry ("" = none; in-process tests).
        self.token = token
        # continue token → (expiry, resourceVersion, remaining items)
        self._snapshots: dict[str, tuple[float, int, list[dict[str, Any]]]] = {}
        self.hub = WatchHub(store, bookmark_interval=bookmark_interval, queue_size=watch_queue)
        self.frozen = False  # tests: refuse watches (as an apiserver restart would) until thawed
        self.hidden: set[str] = set()  # kinds answered 404, like a cluster without that CRD
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._authenticate, self._errors]
        )
        self.app.router.add_get("/version", self._version)
        self.app.router.add_get("/healthz", self._ok)
        self.app.router.add_get("/readyz", self._ok)
        self.app.router.add_get("/api", self._api_versions)
        self.app.router.add_get("/apis", self._api_groups)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    def close_watches(self) -> None:
        """End every open watch stream (clients reconnect with their last resourceVersion)."""
        self.hub.close_all()

    # --- middleware and meta endpoints ----------------------------------------------------------
    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if self.token and request.path not in _UNAUTHENTICATED:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.token):
                return _error(ApiError(401, "Unauthorized", "Unauthorized: a bearer token is required"))
        resp: web.StreamResponse = await handler(request)
        return resp

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except ApiError as e:
            return _error(e)
        except web.HTTPRequestEntityTooLarge:
            return _error(
                ApiError(413, "RequestEntityTooLarge", f"request body exceeds {MAX_BODY_BYTES} bytes")
            )
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("request %s %s failed", request.method, request.path)
            return _error(ApiError(500, "InternalError", f"internal error: {type(e).__name__}"))

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"major": "1", "minor": "33", "gitVersion": f"v1.33.0-nodemesh-{__version__}"}
        )

    async def _ok(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _api_versions(self, _: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def _api_groups(self, _: web.Request) -> web.Response:
        groups: dict[str, set[str]] = {}
        for k in KINDS:
            if k.group:
                groups.setdefault(k.group, set()).add(k.version)
        body = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(vs)],
                    "preferredVersion": {"groupVersion": f"{g}/{sorted(vs)[-1]}", "version": sorted(vs)[-1]},
                }
                for g, vs in sorted(groups.items())
            ],
        }
        return web.json_response(body)

    def _resource_list(self, group: str, version: str) -> web.Response:
        kinds = [k for k in KINDS if k.group == group and k.version == version]
        if not kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[dict[str, Any]] = []
        for k in kinds:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append(
                {
                    "name": k.plural,
                    "singularName": k.kind.lower(),
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": verbs,
                    "shortNames": list(k.short_names),
                }
            )
            if k.has_status:
                resources.append(
                    {
                        "name": f"{k.plural}/status",
                        "singularName": "",
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
        )

    # --- resources ------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segs = [s for s in request.path.split("/") if s]
        if request.method == "GET" and segs[:1] == ["api"] and len(segs) == 2:
            return self._resource_list("", segs[1])
        if request.method == "GET" and segs[:1] == ["apis"] and len(segs) == 3:
            return self._resource_list(segs[1], segs[2])
        route = parse_path(request.path)
        if route is None or route.kind.kind in self.hidden:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if route.subresource and not route.kind.has_status:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        m = request.method
        if not route.name:
            if m == "GET":
                q = request.query
                if q.get("watch") in ("1", "true", "True"):
                    if self.frozen:
                        raise ApiError(503, "ServiceUnavailable", "watches are paused")
                    match = self._selector(q.get("labelSelector", ""), q.get("fieldSelector", ""))
                    return await self.hub.serve(request, route.kind, route.namespace, match)
                return self._list(route, q)
            if m == "POST":
                return await self._create(request, route)
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource: {m}",
            )
        if m == "GET":
            return web.json_response(self.store.get(route.kind, route.namespace, route.name))
        if m == "PUT":
            return await self._replace(request, route)
        if m == "PATCH":
            return await self._patch(request, route)
        if m == "DELETE" and not route.subresource:
            return await self._delete(request, route)
        raise ApiError(
            405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {m}"
        )

    @staticmethod
    def _selector(labels: str, fields: str) -> Callable[[dict[str, Any]], bool]:
        try:
            lp = label_selector(labels) if labels else None
            fp = field_selector(fields) if fields else None
        except SelectorError as e:
            raise ApiError(400, "BadRequest", str(e)) from e
        return lambda o: (lp is None or lp(o)) and (fp is None or fp(o))

    def _list(self, route: Route, query: Any) -> web.Response:
        """A list, paginated with ``limit``/``continue`` over a consistent snapshot (as etcd gives)."""
        k = route.kind
        token = query.get("continue", "")
        if token:
            snap = self._snapshots.get(token)
            if snap is None or snap[0] < time.monotonic():
                self._snapshots.pop(token, None)
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue parameter.",
                )
            _, rv, items = self._snapshots.pop(token)
        else:
            match = self._selector(query.get("labelSelector", ""), query.get("fieldSelector", ""))
            all_items, rv = self.store.list(k, route.namespace or None)
            items = [o for o in all_items if match(o)]
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as e:
            raise ApiError(400, "BadRequest", "limit must be an integer") from e
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if 0 < limit < len(items):
            items, rest = items[:limit], items[limit:]
            nxt = secrets.token_urlsafe(12)
            now = time.monotonic()
            self._snapshots = {t: v for t, v in self._snapshots.items() if v[0] >= now}
            self._snapshots[nxt] = (now + SNAPSHOT_TTL_S, rv, rest)
            meta["continue"] = nxt
            meta["remainingItemCount"] = len(rest)
        body = {"kind": f"{k.kind}List", "apiVersion": k.api_version, "metadata": meta, "items": items}
        return web.json_response(body)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "BadRequest", f"invalid JSON body: {e}") from e

    async def _object_body(self, request: web.Request, route: Route) -> dict[str, Any]:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        k = route.kind
        if body.get("kind", k.kind) != k.kind or body.get("apiVersion", k.api_version) != k.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version/kind in the request ({body.get('apiVersion')}, {body.get('kind')}) "
                f"does not match the endpoint ({k.api_version}, {k.kind})",
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if k.namespaced:
            if meta.get("namespace") and meta["namespace"] != route.namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = route.namespace
        if route.name and meta.get("name", route.name) != route.name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if route.name:
            meta["name"] = route.name
        return body

    async def _create(self, request: web.Request, route: Route) -> web.Response:
        if route.subresource:
            raise ApiError(405, "MethodNotAllowed", "POST is not allowed on a subresource")
        body = await self._object_body(request, route)
        return web.json_response(self.store.create(route.kind, body), status=201)

    async def _replace(self, request: web.Request, route: Route) -> web.Response:
        body = await self._object_body(request, route)
        out = self.store.update(route.kind, body, status_only=route.subresource == "status")
        return web.json_response(out)

    async def _patch(self, request: web.Request, route: Route) -> web.Response:
        ctype = request.content_type
        fn = _PATCHES.get(ctype)
        if fn is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f"accepted media types include: {', '.join(_PATCHES)}",
            )
        patch = await self._body(request)
        cur = self.store.get(route.kind, route.namespace, route.name)
        try:
            new = fn(cur, patch)
        except PatchError as e:
            raise ApiError(422, "Invalid", f"the patch cannot be applied: {e}") from e
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiError(422, "Invalid", "the patch produced an object without metadata")
        pm = patch.get("metadata") if isinstance(patch, dict) else None
        # A resourceVersion or uid in the patch is a precondition; otherwise patch the current one.
        if not (isinstance(pm, dict) and "resourceVersion" in pm):
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        new["metadata"]["name"], new["metadata"]["namespace"] = route.name, route.namespace
        out = self.store.update(route.kind, new, status_only=route.subresource == "status")
        return web.json_response(out)

    async def _delete(self, request: web.Request, route: Route) -> web.Response:
        uid = ""
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    opts = json.loads(raw)
                    uid = str(((opts.get("preconditions") or {}).get("uid")) or "")
                except (ValueError, AttributeError) as e:
                    raise ApiError(400, "BadRequest", f"invalid DeleteOptions: {e}") from e
        gone = self.store.delete(route.kind, route.namespace, route.name, uid=uid)
        return web.json_response(gone)
