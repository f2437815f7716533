"""Kubernetes ``Status`` errors of the local API server: every failure a client sees is one of these.

The shapes (``kind: Status``, ``status: Failure``, ``reason``, ``code``, ``details``) and the message
texts follow kube-apiserver, so the ``kubernetes`` client and ``kubectl`` read them as they would
from a real cluster.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "already_exists", "conflict", "expired", "invalid", "not_found", "status_object"]


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = details
    return out


class ApiError(Exception):
    """An API failure that becomes a Status response with ``code``."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)


def _resource(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    res = _resource(plural, group)
    return ApiError(
        404, "NotFound", f'{res} "{name}" not found', {"name": name, "group": group, "kind": plural}
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    res = _resource(plural, group)
    return ApiError(
        409, "AlreadyExists", f'{res} "{name}" already exists', {"name": name, "group": group, "kind": plural}
    )


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    res = _resource(plural, group)
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res} "{name}": {why}',
        {"name": name, "group": group, "kind": plural},
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid with one cause per (field, message)."""
    text = "; ".join(f"{f}: {m}" if f else m for f, m in causes)
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group or "core"} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


def expired(requested: int, oldest: int) -> ApiError:
    """The watch error for a resourceVersion older than the kept history (etcd compaction)."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")
