"""Readiness probes for the processes of a local cluster (plain HTTP on loopback).

Each probe answers ``(ready, version)``: a nodemesh service's ``/readyz`` (JSON with ``version``),
the API server's ``/readyz``, nats-server's monitoring ``/healthz`` (version from ``/varz``) and
Envoy's admin ``/ready`` (version from ``/server_info``).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

__all__ = ["http_get", "probe"]

_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """(status, parsed JSON body or text); status 0 if nothing answered."""
    try:
        async with session.get(url, timeout=_TIMEOUT) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0, None


async def probe(session: aiohttp.ClientSession, kind: str, port: int, want_version: bool) -> tuple[bool, str]:
    """Probe one process; ``want_version`` also asks for its version (once, when it turns ready)."""
    base = f"http://127.0.0.1:{port}"
    version = ""
    if kind == "readyz":
        status, body = await http_get(session, base + "/readyz")
        if isinstance(body, dict):
            version = str(body.get("version", ""))
        return status == 200, version
    if kind == "apiserver":
        status, _ = await http_get(session, base + "/readyz")
        if status == 404:
            status, _ = await http_get(session, base + "/api")
        if status == 200 and want_version:
            _, body = await http_get(session, base + "/version")
            if isinstance(body, dict):
                version = str(body.get("gitVersion", ""))
        return status == 200, version
    if kind == "nats":
        status, _ = await http_get(session, base + "/healthz")
        if status == 200 and want_version:
            _, body = await http_get(session, base + "/varz")
            if isinstance(body, dict):
                version = str(body.get("version", ""))
        return status == 200, version
    if kind == "prometheus":
        status, _ = await http_get(session, base + "/-/ready")
        if status == 200 and want_version:
            _, body = await http_get(session, base + "/api/v1/status/buildinfo")
            if isinstance(body, dict):
                version = str((body.get("data") or {}).get("version", ""))
        return status == 200, version
    if kind == "envoy":
        status, _ = await http_get(session, base + "/ready")
        if status == 200 and want_version:
            _, body = await http_get(session, base + "/server_info")
            if isinstance(body, dict):
                version = (
                    str(body.get("version", "")).split("/")[1:2][0] if "/" in str(body.get("version")) else ""
                )
        return status == 200, version
    raise ValueError(f"unknown probe {kind!r}")
