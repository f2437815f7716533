"""Serve a :class:`Translation` to a real Envoy through files (xDS filesystem subscriptions).

The conformance runner's standalone mode and the gateway tests use it so they need no ADS server:
each resource type is one ``DiscoveryResponse`` file; every ADS config source in the resources is
rewritten to the file of its type; files are replaced atomically (rename), Envoy reloads them via
``watched_directory``. :meth:`FileXds.wait_applied` polls the admin API until Envoy runs a version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from conformance.envoy import Envoy
from services.xds.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Translation

__all__ = ["FileXds", "bootstrap"]

_FILES = {
    LISTENER: "lds.json",
    CLUSTER: "cds.json",
    ROUTE: "rds.json",
    ENDPOINT: "eds.json",
    SECRET: "sds.json",
}
_SOURCE_KEYS = {"configSource": ROUTE, "edsConfig": ENDPOINT, "sdsConfig": SECRET}


# The sibling field naming the one resource a subscription asks for (RDS, EDS and SDS subscriptions
# reject a file holding any other resource, so each resource gets its own file).
_NAME_KEYS = {"configSource": "routeConfigName", "edsConfig": "serviceName", "sdsConfig": "name"}


def _file(d: Path, type_url: str, name: str = "") -> Path:
    if not name:
        return d / _FILES[type_url]
    return d / f"{_FILES[type_url][:3]}-{hashlib.sha1(name.encode()).hexdigest()[:20]}.json"


def _path_source(d: Path, type_url: str, name: str = "") -> dict[str, Any]:
    return {
        "pathConfigSource": {"path": str(_file(d, type_url, name)), "watchedDirectory": {"path": str(d)}},
        "resourceApiVersion": "V3",
    }


def _rewrite(node: Any, d: Path) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _SOURCE_KEYS and isinstance(v, dict) and "ads" in v:
                out[k] = _path_source(d, _SOURCE_KEYS[k], str(node.get(_NAME_KEYS[k], "")))
            else:
                out[k] = _rewrite(v, d)
        return out
    if isinstance(node, list):
        return [_rewrite(x, d) for x in node]
    return node


def bootstrap(d: Path, node_id: str = "conformance") -> dict[str, Any]:
    return {
        "node": {"id": node_id, "cluster": "nodemesh"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": _snake(_path_source(d, LISTENER)),
            "cds_config": _snake(_path_source(d, CLUSTER)),
        },
    }


def _snake(src: dict[str, Any]) -> dict[str, Any]:
    p = src["pathConfigSource"]
    return {
        "path_config_source": {
            "path": p["path"],
            "watched_directory": {"path": p["watchedDirectory"]["path"]},
        },
        "resource_api_version": "V3",
    }


class FileXds:
    """Files in ``directory`` that one Envoy reads; :meth:`write` publishes a new version."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.last: dict[str, dict[str, Any]] = {}
        self._written: dict[Path, str] = {}
        for t in _FILES:
            self._put(t, {"version_info": "0", "resources": []})

    def _put(self, type_url: str, body: dict[str, Any], name: str = "") -> None:
        path = _file(self.dir, type_url, name)
        text = json.dumps(body)
        if self._written.get(path) == text:
            return
        tmp = self.dir / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        self._written[path] = text

    def write(self, t: Translation, node: str = "") -> str:
        """Publish every resource type (secrets, endpoints, clusters, routes, then listeners)."""
        self.version += 1
        v = str(self.version)
        res = t.for_node(node) if node else t.resources
        for type_url in (SECRET, ENDPOINT, CLUSTER, ROUTE, LISTENER):
            items = []
            for name in sorted(res.get(type_url, {})):
                d = json_format.MessageToDict(res[type_url][name])
                d["@type"] = type_url
                d = _rewrite(d, self.dir)
                items.append(d)
                if type_url in (SECRET, ENDPOINT, ROUTE):
                    # Per-resource files keep their content (and so Envoy's version) when unchanged.
                    rv = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
                    self._put(type_url, {"version_info": rv, "resources": [d]}, name)
            if type_url in (CLUSTER, LISTENER):
                self._put(type_url, {"version_info": v, "resources": items})
            self.last[type_url] = {"resources": items}
        return v

    async def wait_applied(self, envoy: Envoy, version: str, timeout: float = 30.0) -> bool:
        """Until Envoy's LDS and CDS run ``version`` and no listener is warming (False on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, text = await envoy.admin_get(
                    "/stats?filter=version_text|total_listeners_warming|update_rejected"
                )
            except (TimeoutError, OSError):
                text = ""
            vals = {k: v.strip().strip('"') for k, _, v in (ln.partition(": ") for ln in text.splitlines())}
            lds = vals.get("listener_manager.lds.version_text", "")
            cds = vals.get("cluster_manager.cds.version_text", "")
            if (
                lds == version
                and cds == version
                and vals.get("listener_manager.total_listeners_warming") == "0"
            ):
                return True
            await asyncio.sleep(0.05)
        return False
