"""What each node's Envoy has accepted: ACK/NACK events and the per-resource state they imply.

The server reports every response it sent (:class:`Sent`) and the ACK or NACK that answered it
(:class:`AckEvent`). :class:`AckTracker` folds those into, per node and type, the content version of
every resource Envoy *applied* and of every resource it *rejected* (with the reason). Status uses it:
a Gateway is Programmed only when its listeners' current versions are applied.

Envoy applies listener and cluster updates resource by resource: on a NACK of LDS/CDS that reads
``Error adding/updating listener(s)|cluster(s) <name>: <reason>…`` the named resources are rejected
and the others are in effect (``LdsApiImpl::onConfigUpdate``, ``CdsApiHelper``). Any other NACK (a
proto validation failure, or any NACK of the other types) rejects the whole response.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from services.xds.snapshot import CLUSTER, LISTENER

__all__ = ["AckEvent", "AckTracker", "ResourceState", "Sent"]

_PER_RESOURCE = (LISTENER, CLUSTER)


@dataclass(frozen=True, slots=True)
class Sent:
    """One response on one stream: the resources (name → content version) it carried."""

    node: str
    type_url: str
    version: str
    nonce: str
    resources: dict[str, str]
    removed: tuple[str, ...] = ()
    full_state: bool = False  # SotW LDS/CDS: absent resources are removed by Envoy
    delta: bool = False
    sent_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class AckEvent:
    sent: Sent
    ack: bool
    error: str = ""
    received_at: float = field(default_factory=time.monotonic)

    @property
    def latency(self) -> float:
        return self.received_at - self.sent.sent_at


@dataclass(frozen=True, slots=True)
class ResourceState:
    applied: str | None  # content version Envoy runs, None if it never accepted one
    rejected: str | None = None  # content version Envoy refused
    error: str = ""


_PER_RESOURCE_ERROR = re.compile(r"^Error adding/updating (?:listener|cluster)\(s\) ")


def _named_in(error: str, names: dict[str, str]) -> set[str] | None:
    """The resources an LDS/CDS error names, or None if Envoy rejected the response as a whole.

    Envoy applies LDS/CDS resource by resource and then reports ``Error adding/updating listener(s)
    <name>: <reason>`` (one per line; clusters joined by ``, ``). Any other error — e.g. a proto
    validation failure — comes before that and rejects the whole response.
    """
    m = _PER_RESOURCE_ERROR.match(error)
    if m is None:
        return None
    body = error[m.end() :]
    return {n for n in names if re.search(r"(?:^|\n|, )" + re.escape(n) + ": ", body)}


class AckTracker:
    """Per node/type/resource: which content version Envoy applied, which it rejected and why."""

    def __init__(self) -> None:
        self._applied: dict[str, dict[str, dict[str, str]]] = {}
        self._rejected: dict[str, dict[str, dict[str, tuple[str, str]]]] = {}
        self.last: dict[tuple[str, str], AckEvent] = {}

    def record(self, ev: AckEvent) -> None:
        s = ev.sent
        applied = self._applied.setdefault(s.node, {}).setdefault(s.type_url, {})
        rejected = self._rejected.setdefault(s.node, {}).setdefault(s.type_url, {})
        self.last[(s.node, s.type_url)] = ev
        named: set[str] | None = set()
        if not ev.ack:
            named = _named_in(ev.error, s.resources) if s.type_url in _PER_RESOURCE else None
        if named is None:  # the whole response was rejected: nothing of it applies
            for n, v in s.resources.items():
                rejected[n] = (v, ev.error)
            return
        refused = named or set()
        if s.full_state:
            for n in list(applied):
                if n not in s.resources:
                    del applied[n]
        for n in s.removed:
            applied.pop(n, None)
            rejected.pop(n, None)
        for n, v in s.resources.items():
            if n in refused:
                rejected[n] = (v, ev.error)
            else:
                applied[n] = v
                rejected.pop(n, None)

    def state(self, node: str, type_url: str, name: str) -> ResourceState:
        applied = self._applied.get(node, {}).get(type_url, {}).get(name)
        rej = self._rejected.get(node, {}).get(type_url, {}).get(name)
        if rej is None:
            return ResourceState(applied)
        return ResourceState(applied, rej[0], rej[1])

    def reset(self, node: str, type_url: str) -> None:
        """The node's Envoy holds nothing of ``type_url`` any more (it restarted)."""
        self._applied.get(node, {}).pop(type_url, None)
        self._rejected.get(node, {}).pop(type_url, None)

    def forget(self, node: str) -> None:
        """Drop a node's state (its Envoy is gone for good)."""
        self._applied.pop(node, None)
        self._rejected.pop(node, None)
        for key in [k for k in self.last if k[0] == node]:
            del self.last[key]

    def nodes(self) -> list[str]:
        return sorted(self._applied)
