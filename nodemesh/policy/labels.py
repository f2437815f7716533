"""Cilium-style labels and label selectors: parsing ``source:key=value`` and matching selectors.

A label string is ``source:key=value`` (``k8s:app=web``, ``reserved:world``, ``cidr:10.0.0.0/8``).
A selector key without a source (``app``) matches any source, as Cilium's ``any:`` prefix does.
Requirements are ANDed; an empty selector selects everything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Literal

import msgspec

from nodemesh.labels import NAMESPACE_LABELS, POD_NAMESPACE

__all__ = [
    "NS_LABEL",
    "NS_LABELS_PREFIX",
    "LabelReq",
    "LabelSet",
    "Selector",
    "parse_label",
    "split_key",
]

#: The namespace label every pod identity carries (Cilium: ``k8s:io.kubernetes.pod.namespace``).
NS_LABEL = POD_NAMESPACE
#: Namespace labels are copied to pod identities under this prefix.
NS_LABELS_PREFIX = NAMESPACE_LABELS + "."

Op = Literal["In", "NotIn", "Exists", "DoesNotExist"]


def split_key(key: str) -> tuple[str, str]:
    """``k8s:app`` → (``k8s``, ``app``); ``app`` → (``any``, ``app``).

    The part before the first ``:`` is a source only if it looks like one (no ``.``, ``/``, ``=``):
    Kubernetes label keys may contain dots and slashes, never a colon, while sources never contain
    those characters.
    """
    src, sep, rest = key.partition(":")
    if sep and src and not any(c in src for c in "./="):
        return src, rest
    return "any", key


def parse_label(label: str) -> tuple[str, str, str]:
    """``k8s:app=web`` → (``k8s``, ``app``, ``web``); ``reserved:world`` → (``reserved``, ``world``, "")."""
    src, key = split_key(label)
    key, _, value = key.partition("=")
    return src, key, value


class LabelSet:
    """An identity's labels indexed by key for selector matching."""

    __slots__ = ("by_key", "labels")

    def __init__(self, labels: Iterable[str]) -> None:
        self.labels: tuple[str, ...] = tuple(sorted(set(labels)))
        # One LabelSet per identity, in every service that evaluates policy: keep it small. Keys and
        # sources repeat across identities (interned: one string each), values mostly do not;
        # tuples, not lists (10k identities: 13 → 8 MB).
        by_key: dict[str, tuple[tuple[str, str], ...]] = {}
        for lab in self.labels:
            src, key, value = parse_label(lab)
            key = sys.intern(key)
            by_key[key] = (*by_key.get(key, ()), (sys.intern(src), value))
        self.by_key = by_key

    def get(self, source: str, key: str) -> list[str]:
        """Values of ``key`` under ``source`` (``any`` = every source)."""
        return [v for s, v in self.by_key.get(key, ()) if source == "any" or s == source]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and other.labels == self.labels

    def __hash__(self) -> int:
        return hash(self.labels)

    def __repr__(self) -> str:
        return f"LabelSet({list(self.labels)!r})"


class LabelReq(msgspec.Struct, frozen=True, order=True):
    """One requirement: ``source:key`` ``op`` ``values``."""

    source: str
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        have = labels.get(self.source, self.key)
        if self.op == "In":
            return any(v in self.values for v in have)
        if self.op == "NotIn":
            return not any(v in self.values for v in have)
        if self.op == "Exists":
            return bool(have)
        return not have


class Selector(msgspec.Struct, frozen=True, order=True):
    """ANDed label requirements; no requirements selects every identity."""

    reqs: tuple[LabelReq, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        return all(r.matches(labels) for r in self.reqs)

    def has_key(self, key: str) -> bool:
        """True if some requirement is on ``key`` (any source, or ``k8s``)."""
        return any(r.key == key and r.source in ("any", "k8s") for r in self.reqs)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.reqs)

    def with_req(self, req: LabelReq) -> Selector:
        return Selector(tuple(sorted({*self.reqs, req})))

    @staticmethod
    def equals(key: str, value: str) -> Selector:
        src, k = split_key(key)
        return Selector((LabelReq(src, k, "In", (value,)),))
