"""The pure core between translation and the wire: snapshots per node, Programmed status, patch dedup.

- :func:`build_snapshots` turns a :class:`Translation` into a default snapshot plus per-node ones, each
  made consistent: a listener or cluster naming an absent route, endpoint or secret is left out (and
  reported) rather than served to warm forever or blocking every other update.
- :func:`programmed` decides a Gateway's ``Programmed`` from what each node's Envoy applied
  (:class:`AckTracker`): True only when the required nodes applied the current content version of
  every Envoy listener serving it; False with the NACK reason when one rejected it; Pending otherwise.
- :class:`StatusBook` publishes a status patch only when it changes what the object already shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodemesh.messages.k8s import StatusPatch
from nodemesh.messages.xds import NodeXdsStatus, ResourceXdsStatus
from services.xds.acks import AckTracker
from services.xds.snapshot import LISTENER, ORDER, Snapshot
from services.xds.translate import GatewayInfo, Translation, with_programmed
from services.xds.translate.status import keep_transition_times

__all__ = ["Snapshots", "StatusBook", "build_snapshots", "gateway_patches", "node_status", "programmed"]


@dataclass
class Snapshots:
    default: Snapshot
    per_node: dict[str, Snapshot] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def for_node(self, node: str) -> Snapshot:
        return self.per_node.get(node, self.default)


def _consistent(snap: Snapshot, where: str, errors: list[str]) -> Snapshot:
    fixed, bad = snap.without_dangling()
    for (t, name), missing in sorted(bad.items()):
        refs = ", ".join(f"{mt.rsplit('.', 1)[-1]} {mn!r}" for mt, mn in missing)
        errors.append(f"{where}: {t.rsplit('.', 1)[-1]} {name!r} left out: it references missing {refs}")
    return fixed


def build_snapshots(tr: Translation) -> Snapshots:
    """Default and per-node snapshots of a translation, each consistent (see module docstring)."""
    errors: list[str] = []
    full = Snapshot(tr.resources)
    default = _consistent(full, "all nodes", errors)
    per_node = {}
    for node in sorted(tr.node_resources):
        snap = full  # a node's extras on top of the shared resources, which are not reserialized
        for type_url, extra in tr.node_resources[node].items():
            snap = snap.replace(type_url, upsert=extra.values())
        per_node[node] = _consistent(snap, f"node {node}", errors)
    return Snapshots(default, per_node, errors)


@dataclass(frozen=True)
class Programmed:
    ok: bool
    reason: str = ""
    message: str = ""


def programmed(
    info: GatewayInfo, snaps: Snapshots, tracker: AckTracker, nodes: Iterable[str], mode: str = "all"
) -> Programmed:
    """Whether the Envoys of ``nodes`` (all of them, or any with ``mode="any"``) run this Gateway."""
    nodes = sorted(set(nodes))
    if not info.envoy_listeners:
        return Programmed(False, "Invalid", "No valid listener to program")
    if not nodes:
        return Programmed(False, "Pending", "No node Envoy has connected yet")
    done: list[str] = []
    waiting: list[str] = []
    for node in nodes:
        current = snaps.for_node(node).resources(LISTENER)
        node_ok = True
        for name in info.envoy_listeners:
            res = current.get(name)
            if res is None:
                return Programmed(False, "Invalid", f"Listener {name} is not in the configuration")
            st = tracker.state(node, LISTENER, name)
            if st.rejected == res.version:
                return Programmed(False, "Invalid", f"Envoy on {node} rejected listener {name}: {st.error}")
            node_ok = node_ok and st.applied == res.version
        (done if node_ok else waiting).append(node)
    if (mode == "any" and done) or not waiting:
        return Programmed(True)
    return Programmed(
        False, "Pending", f"Waiting for Envoy on {', '.join(waiting)} to accept the configuration"
    )


def gateway_patches(
    tr: Translation,
    snaps: Snapshots,
    tracker: AckTracker,
    nodes: Iterable[str],
    mode: str,
    now: str,
) -> list[StatusPatch]:
    """Every status patch of the translation, Gateways' with ``Programmed`` merged in."""
    out = list(tr.statuses)
    nodes = list(nodes)
    for info in tr.gateways.values():
        i = info.status_patch_index
        if not 0 <= i < len(out):
            continue
        p = programmed(info, snaps, tracker, nodes, mode)
        out[i] = with_programmed(out[i], info, p.ok, p.reason, p.message, now)
    return out


def node_status(node: str, snap: Snapshot | None, tracker: AckTracker, problems_only: bool) -> NodeXdsStatus:
    """Per resource xds serves ``node``: applied (Envoy runs this version), rejected (with Envoy's
    reason) or pending (sent or about to be, not ACKed yet)."""
    out = NodeXdsStatus(node=node)
    if snap is None:
        return out
    for t in ORDER:
        for name, res in snap.resources(t).items():
            st = tracker.state(node, t, name)
            state = "pending"
            if st.applied == res.version:
                state = "applied"
            elif st.rejected == res.version:
                state = "rejected"
            out.counts[state] = out.counts.get(state, 0) + 1
            if problems_only and state == "applied":
                continue
            out.resources.append(
                ResourceXdsStatus(
                    type_url=t,
                    name=name,
                    state=state,
                    version=res.version,
                    applied=st.applied or "",
                    error=st.error if state == "rejected" else "",
                )
            )
    return out


def _key(p: StatusPatch) -> tuple[str, str, str]:
    return (p.kind, p.namespace, p.name)


class StatusBook:
    """Remembers what was published; :meth:`changed` says whether a patch would change anything."""

    def __init__(self) -> None:
        self._published: dict[tuple[str, str, str], dict[str, Any]] = {}

    def settle(self, patch: StatusPatch, current: Mapping[str, Any] | None) -> StatusPatch:
        """Keep lastTransitionTime on conditions whose status did not change (vs. what we last
        published, else what the object shows). Edits ``patch.status`` in place: translation makes
        fresh status dicts every time, and this is on the hot path (1,000 routes → 1,000 patches)."""
        cur = self._published.get(_key(patch)) or dict((current or {}).get("status") or {})
        status = patch.status
        if isinstance(status.get("conditions"), list):
            keep_transition_times(status["conditions"], cur.get("conditions"))
        old_listeners = {lst.get("name"): lst for lst in cur.get("listeners") or [] if isinstance(lst, dict)}
        for lst in status.get("listeners") or []:
            old = old_listeners.get(lst.get("name"))
            if old is not None and isinstance(lst.get("conditions"), list):
                keep_transition_times(lst["conditions"], old.get("conditions"))
        return patch

    def changed(self, patch: StatusPatch, current: Mapping[str, Any] | None) -> bool:
        if self._published.get(_key(patch)) == patch.status:
            return False
        cur = (current or {}).get("status") or {}
        return any(cur.get(k) != v for k, v in patch.status.items())

    def published(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._published.get((kind, namespace, name))

    def mark(self, patch: StatusPatch) -> None:
        self._published[_key(patch)] = patch.status

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._published.pop((kind, namespace, name), None)
