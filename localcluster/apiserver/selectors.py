"""Label and field selectors as the Kubernetes list/watch API parses them (``?labelSelector=``).

Labels: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``, comma-joined.
Fields: ``metadata.name``, ``metadata.namespace``, ``spec.nodeName`` and a few more with ``=``/``!=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["SelectorError", "field_selector", "label_selector", "match_labels_selector"]

Pred = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")

_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
    "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
    "spec.type": lambda o: str((o.get("spec") or {}).get("type", "")),
    "type": lambda o: str(o.get("type", "")),
}


class SelectorError(ValueError):
    """A selector string that does not parse."""


def _split(expr: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _eq(key: str, val: str, neg: bool) -> Pred:
    return lambda o: (_labels(o).get(key) == val) != neg


def _in(key: str, vals: set[str], neg: bool) -> Pred:
    return lambda o: (_labels(o).get(key) in vals) != neg


def _has(key: str, neg: bool) -> Pred:
    return lambda o: (key in _labels(o)) != neg


def _field(getter: Callable[[dict[str, Any]], str], val: str, neg: bool) -> Pred:
    return lambda o: (getter(o) == val) != neg


def label_selector(expr: str) -> Pred:
    preds: list[Pred] = []
    for term in _split(expr):
        m = _EQ.match(term)
        if m:
            key, op, val = m.groups()
            preds.append(_eq(key, val, op == "!="))
            continue
        m = _SET.match(term)
        if not m:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        neg, key, op, values = m.groups()
        if op:
            if neg:
                raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
            vals = {v.strip() for v in values.split(",") if v.strip()}
            preds.append(_in(key, vals, op == "notin"))
        else:
            preds.append(_has(key, bool(neg)))
    return lambda o: all(p(o) for p in preds)


def field_selector(expr: str) -> Pred:
    preds: list[Pred] = []
    for term in _split(expr):
        m = _EQ.match(term)
        if not m:
            raise SelectorError(f"invalid field selector: {term.strip()!r}")
        key, op, val = m.groups()
        getter = _FIELDS.get(key)
        if getter is None:
            raise SelectorError(f'field label not supported: "{key}"')
        preds.append(_field(getter, val, op == "!="))
    return lambda o: all(p(o) for p in preds)


def match_labels_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) against labels; empty matches all."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key", ""), req.get("operator", ""), req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
