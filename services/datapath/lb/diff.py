"""Plan change → ordered map operations, so the programs never see count and slots disagree.

:class:`LbState` mirrors what the pinned maps hold (rebuilt from them after a restart, see
``maps.LbMaps.read_state``); :func:`diff` compares it with the desired plans of some frontends and
returns :data:`Op`s; :meth:`LbState.apply` replays one op on the mirror. The writer applies each op
to the kernel, then to the mirror; the unit tests replay ops and check invariants after each one.

Ordering, per frontend (Cilium's rule: new slots before the count on grow, the count before dropping
slots on shrink), so that every intermediate state is one the programs may act on:

1. backends new to the maps are written first (an id exists before any slot names it);
2. affinity-match entries of backends leaving the frontend are deleted (affinity cannot lead to
   them any more), those of the frontend's backends added;
3. slots: a backend that stays keeps its slot; a slot whose backend leaves is overwritten in place
   (one atomic write takes it out of the choice); on shrink, tail slots still holding a leaving
   backend are first overwritten with a staying one, then the count shrinks, then the tail is
   deleted; on grow, the new tail is written, then the count grows. A new frontend gets its
   reverse-NAT entry and slots before slot 0, the write that makes it visible; a removed one
   loses slot 0 first;
4. backends no slot names any more are deleted last.

So a backend leaving a frontend is no longer chosen after the first write that concerns it, and
slots 1..count always exist and name backends that exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.datapath.lb.model import BE_ACTIVE, F_NODE_PORT, Backend, Frontend, FrontendPlan

__all__ = [
    "MAX_REV_NAT_ID",
    "DelAffMatch",
    "DelBackend",
    "DelNodePort",
    "DelRevNat",
    "DelSlot",
    "IdsExhausted",
    "LbState",
    "Op",
    "PutAffMatch",
    "PutBackend",
    "PutNodePort",
    "PutRevNat",
    "PutSlot",
    "SlotZero",
    "SvcEntry",
    "check_consistent",
    "diff",
    "nodeports_of",
]

MAX_REV_NAT_ID = 0xFFFF
MAX_BACKEND_ID = 0xFFFFFFFF


class IdsExhausted(RuntimeError):
    """No free reverse-NAT id (65535 frontends) or backend id."""


@dataclass(frozen=True)
class SlotZero:
    """Slot 0's value: the frontend itself."""

    count: int
    rev_nat_id: int
    flags: int
    affinity_timeout: int = 0
    l7_proxy_port: int = 0


@dataclass
class SvcEntry:
    """One frontend's entries in the services map."""

    zero: SlotZero | None = None  # None: slot 0 absent (leftovers of an interrupted write)
    slots: dict[int, int] = field(default_factory=dict)  # slot number ≥ 1 → backend id

    def chosen(self) -> list[int]:
        """Backend ids the programs may pick (slots 1..count; 0 where a slot is missing)."""
        n = self.zero.count if self.zero is not None else 0
        return [self.slots.get(i, 0) for i in range(1, n + 1)]


# --- operations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PutBackend:
    id: int
    backend: Backend
    state: int


@dataclass(frozen=True)
class DelBackend:
    id: int


@dataclass(frozen=True)
class PutSlot:
    frontend: Frontend
    slot: int  # 0 = the frontend itself (``zero`` set)
    backend_id: int = 0
    zero: SlotZero | None = None


@dataclass(frozen=True)
class DelSlot:
    frontend: Frontend
    slot: int


@dataclass(frozen=True)
class PutRevNat:
    id: int
    frontend: Frontend


@dataclass(frozen=True)
class DelRevNat:
    id: int


@dataclass(frozen=True)
class PutAffMatch:
    backend_id: int
    rev_nat_id: int


@dataclass(frozen=True)
class DelAffMatch:
    backend_id: int
    rev_nat_id: int


@dataclass(frozen=True)
class PutNodePort:
    port: int
    proto: int


@dataclass(frozen=True)
class DelNodePort:
    port: int
    proto: int


Op = (
    PutBackend | DelBackend | PutSlot | DelSlot | PutRevNat | DelRevNat | PutAffMatch | DelAffMatch
    | PutNodePort | DelNodePort
)  # fmt: skip


@dataclass
class LbState:
    """The maps' content, as the agent knows it."""

    svc: dict[Frontend, SvcEntry] = field(default_factory=dict)
    backends: dict[int, tuple[Backend, int]] = field(default_factory=dict)  # id → (backend, state)
    revnat: dict[int, Frontend] = field(default_factory=dict)
    aff_match: dict[int, set[int]] = field(default_factory=dict)  # rev-NAT id → backend ids
    nodeports: set[tuple[int, int]] = field(default_factory=set)  # (port, proto)
    be_ids: dict[Backend, int] = field(default_factory=dict)
    rev_of: dict[Frontend, int] = field(default_factory=dict)  # reverse index of revnat
    refs: Counter[int] = field(default_factory=Counter)  # backend id → slots naming it

    def rebuild_index(self) -> None:
        """Recompute the indexes (after filling the dicts directly, e.g. from the maps)."""
        self.be_ids = {b: i for i, (b, _) in sorted(self.backends.items())}
        self.rev_of = {fe: i for i, fe in sorted(self.revnat.items())}
        self.refs = Counter(b for e in self.svc.values() for b in e.slots.values() if b)

    def has_aff_match(self, backend_id: int, rev_nat_id: int) -> bool:
        return backend_id in self.aff_match.get(rev_nat_id, ())

    def apply(self, op: Op) -> None:
        """Record ``op`` (already written to the kernel)."""
        if isinstance(op, PutBackend):
            old = self.backends.get(op.id)
            if old is not None and old[0] != op.backend and self.be_ids.get(old[0]) == op.id:
                del self.be_ids[old[0]]
            self.backends[op.id] = (op.backend, op.state)
            self.be_ids[op.backend] = op.id
        elif isinstance(op, DelBackend):
            gone = self.backends.pop(op.id, None)
            if gone is not None and self.be_ids.get(gone[0]) == op.id:
                del self.be_ids[gone[0]]
        elif isinstance(op, PutSlot):
            e = self.svc.setdefault(op.frontend, SvcEntry())
            if op.slot == 0:
                e.zero = op.zero
            else:
                self._unref(e.slots.get(op.slot, 0))
                e.slots[op.slot] = op.backend_id
                self.refs[op.backend_id] += 1
        elif isinstance(op, DelSlot):
            d = self.svc.get(op.frontend)
            if d is None:
                return
            if op.slot == 0:
                d.zero = None
            else:
                self._unref(d.slots.pop(op.slot, 0))
            if d.zero is None and not d.slots:
                del self.svc[op.frontend]
        elif isinstance(op, PutRevNat):
            old_fe = self.revnat.get(op.id)
            if old_fe is not None and self.rev_of.get(old_fe) == op.id:
                del self.rev_of[old_fe]
            self.revnat[op.id] = op.frontend
            self.rev_of[op.frontend] = op.id
        elif isinstance(op, DelRevNat):
            gone_fe = self.revnat.pop(op.id, None)
            if gone_fe is not None and self.rev_of.get(gone_fe) == op.id:
                del self.rev_of[gone_fe]
        elif isinstance(op, PutAffMatch):
            self.aff_match.setdefault(op.rev_nat_id, set()).add(op.backend_id)
        elif isinstance(op, DelAffMatch):
            bs = self.aff_match.get(op.rev_nat_id)
            if bs is not None:
                bs.discard(op.backend_id)
                if not bs:
                    del self.aff_match[op.rev_nat_id]
        elif isinstance(op, PutNodePort):
            self.nodeports.add((op.port, op.proto))
        elif isinstance(op, DelNodePort):
            self.nodeports.discard((op.port, op.proto))

    def _unref(self, bid: int) -> None:
        if bid:
            self.refs[bid] -= 1
            if self.refs[bid] <= 0:
                del self.refs[bid]

    def reachable(self, fe: Frontend) -> set[int]:
        """Backend ids the programs may pick for ``fe`` now."""
        e = self.svc.get(fe)
        return {b for b in e.chosen() if b} if e is not None else set()


class _Ids:
    """Free ids for one diff, handed out in order (the used sets are built only if ids are needed:
    a change that allocates nothing costs nothing here)."""

    def __init__(self, state: LbState) -> None:
        self.state = state
        self.used_rev: set[int] | None = None
        self.used_be: set[int] | None = None
        self.next_rev = 1
        self.next_be = 1

    def rev(self) -> int:
        if self.used_rev is None:
            self.used_rev = {e.zero.rev_nat_id for e in self.state.svc.values() if e.zero is not None}
            self.used_rev |= set(self.state.revnat)
        while self.next_rev <= MAX_REV_NAT_ID and self.next_rev in self.used_rev:
            self.next_rev += 1
        if self.next_rev > MAX_REV_NAT_ID:
            raise IdsExhausted("no free reverse-NAT id (65535 frontends)")
        self.used_rev.add(self.next_rev)
        return self.next_rev

    def backend(self) -> int:
        if self.used_be is None:
            self.used_be = set(self.state.backends)
            self.next_be = max(self.used_be, default=0) + 1
        if self.next_be > MAX_BACKEND_ID:  # wrapped around: search the holes from 1
            self.next_be = 1
        while self.next_be in self.used_be:
            self.next_be += 1
            if self.next_be > MAX_BACKEND_ID:
                raise IdsExhausted("no free backend id")
        self.used_be.add(self.next_be)
        return self.next_be


def _layout(old: list[int], want: list[int]) -> list[int]:
    """New slot order: a backend that stays keeps its slot where that still exists; the others fill
    the holes in ``want``'s order."""
    m = len(want)
    keep = set(want)
    new = [0] * m
    placed: set[int] = set()
    for i in range(min(len(old), m)):
        if old[i] in keep and old[i] not in placed:
            new[i] = old[i]
            placed.add(old[i])
    rest = iter([b for b in want if b not in placed])
    return [b or next(rest) for b in new]


def diff(
    state: LbState,
    desired: Mapping[Frontend, FrontendPlan],
    only: Iterable[Frontend] | None = None,
    nodeports: set[tuple[int, int]] | None = None,
) -> list[Op]:
    """The ops that bring ``state`` to ``desired`` for the frontends in ``only`` (default: every
    frontend of either). A frontend in ``only`` but not in ``desired`` is removed. ``nodeports``
    (when given) is the full set of NodePort (port, proto) pairs, for bind4's guard."""
    scope = sorted(set(only) if only is not None else set(desired) | set(state.svc))
    ops: list[Op] = []

    # 1. backends: new ones get ids; a changed state (ready ↔ terminating) is rewritten in place
    ids: dict[Backend, int] = {}
    wanted: dict[Backend, int] = {}
    for fe in scope:
        fp = desired.get(fe)
        if fp is not None:
            for b, st in zip(fp.backends, fp.states or (BE_ACTIVE,) * len(fp.backends), strict=True):
                wanted[b] = min(wanted.get(b, st), st)  # one endpoint, one state; active wins
    free = _Ids(state)
    for b in sorted(wanted):
        bid = state.be_ids.get(b)
        if bid is None:
            bid = free.backend()
            ops.append(PutBackend(bid, b, wanted[b]))
        elif state.backends[bid][1] != wanted[b]:
            ops.append(PutBackend(bid, b, wanted[b]))
        ids[b] = bid

    # 2./3. frontends that stay or come, then the ones that go
    for fe in scope:
        fp = desired.get(fe)
        if fp is None:
            continue
        cur = state.svc.get(fe)
        rev = cur.zero.rev_nat_id if cur is not None and cur.zero is not None else 0
        rev = rev or state.rev_of.get(fe, 0) or free.rev()
        zero = SlotZero(len(fp.backends), rev, fp.flags, fp.affinity_timeout, fp.l7_proxy_port)
        ops += _frontend_ops(state, fe, cur, [ids[b] for b in fp.backends], zero)
    for fe in scope:
        cur = state.svc.get(fe)
        if fe not in desired and cur is not None:
            ops += _remove_ops(state, fe, cur)

    # a full diff also drops what an interrupted run left without a frontend
    if only is None:
        live_revs = {e.zero.rev_nat_id for fe, e in state.svc.items() if fe in desired and e.zero is not None}
        live_revs |= {o.zero.rev_nat_id for o in ops if isinstance(o, PutSlot) and o.zero is not None}
        done = {o for o in ops if isinstance(o, DelAffMatch | DelRevNat)}
        for rev in sorted(state.aff_match):
            if rev not in live_revs:
                ops += [o for b in sorted(state.aff_match[rev]) if (o := DelAffMatch(b, rev)) not in done]
        for rev in sorted(state.revnat):
            if rev not in live_revs and DelRevNat(rev) not in done:
                ops.append(DelRevNat(rev))

    # 4. backends no slot names any more
    refs = _refs_after(state, ops)
    mine = set(ids.values())
    if only is None:
        candidates = set(state.backends)  # a full diff also collects leftovers
    else:
        candidates = set(mine)
        for fe in scope:
            e = state.svc.get(fe)
            if e is not None:
                candidates.update(e.slots.values())
    for bid in sorted(candidates):
        if (bid in state.backends or bid in mine) and not refs.get(bid, state.refs.get(bid, 0)):
            ops.append(DelBackend(bid))

    # 5. the NodePort guard of bind4
    if nodeports is not None:
        ops += [PutNodePort(p, pr) for p, pr in sorted(nodeports - state.nodeports)]
        ops += [DelNodePort(p, pr) for p, pr in sorted(state.nodeports - nodeports)]
    return ops


def _frontend_ops(
    state: LbState, fe: Frontend, cur: SvcEntry | None, want: list[int], zero: SlotZero
) -> list[Op]:
    ops: list[Op] = []
    rev = zero.rev_nat_id
    old = cur.chosen() if cur is not None else []
    present = dict(cur.slots) if cur is not None else {}
    matched = state.aff_match.get(rev, set())
    for b in sorted(matched - set(want)):  # leaving: affinity must not lead there any more
        ops.append(DelAffMatch(b, rev))
    for b in sorted(set(want) - matched):
        ops.append(PutAffMatch(b, rev))
    if state.revnat.get(rev) != fe:
        ops.append(PutRevNat(rev, fe))
    n, m = len(old), len(want)
    if cur is None or cur.zero is None:
        # new (or left half-written): slots first, then slot 0 makes the frontend visible
        for i, b in enumerate(want):
            if present.get(i + 1) != b:
                ops.append(PutSlot(fe, i + 1, b))
        ops.append(PutSlot(fe, 0, zero=zero))
    else:
        new = _layout(old, want)
        for i in range(min(n, m)):
            if new[i] != old[i]:
                ops.append(PutSlot(fe, i + 1, new[i]))
        if m < n:
            if m > 0:
                for i in range(m, n):
                    if old[i] not in want:
                        ops.append(PutSlot(fe, i + 1, new[0]))  # out of the choice before the count shrinks
            ops.append(PutSlot(fe, 0, zero=zero))
        elif m > n:
            for i in range(n, m):
                ops.append(PutSlot(fe, i + 1, new[i]))
            ops.append(PutSlot(fe, 0, zero=zero))
        elif zero != cur.zero:
            ops.append(PutSlot(fe, 0, zero=zero))
    for s in sorted(present):
        if s > m:  # the old tail, and leftovers of an interrupted write
            ops.append(DelSlot(fe, s))
    return ops


def _remove_ops(state: LbState, fe: Frontend, cur: SvcEntry) -> list[Op]:
    ops: list[Op] = []
    rev = cur.zero.rev_nat_id if cur.zero is not None else 0
    if cur.zero is not None:
        ops.append(DelSlot(fe, 0))  # invisible first: new sockets to it pass untranslated
    ops += [DelSlot(fe, s) for s in sorted(cur.slots)]
    rev = rev or state.rev_of.get(fe, 0)
    if rev:
        ops += [DelAffMatch(b, rev) for b in sorted(state.aff_match.get(rev, ()))]
        if state.revnat.get(rev) == fe:
            ops.append(DelRevNat(rev))
    return ops


def _refs_after(state: LbState, ops: list[Op]) -> dict[int, int]:
    """Slot references, once ``ops`` are applied, of the backend ids the ops touch (others keep
    theirs; nothing is copied, so a small change stays cheap however large the maps)."""
    refs: dict[int, int] = {}
    overlay: dict[tuple[Frontend, int], int] = {}

    def cur(fe: Frontend, slot: int) -> int:
        if (fe, slot) in overlay:
            return overlay[(fe, slot)]
        e = state.svc.get(fe)
        return e.slots.get(slot, 0) if e is not None else 0

    def add(bid: int, n: int) -> None:
        refs[bid] = refs.get(bid, state.refs.get(bid, 0)) + n

    for op in ops:
        if isinstance(op, PutSlot | DelSlot) and op.slot:
            old = cur(op.frontend, op.slot)
            if old:
                add(old, -1)
            new = op.backend_id if isinstance(op, PutSlot) else 0
            if new:
                add(new, 1)
            overlay[(op.frontend, op.slot)] = new
    return refs


def check_consistent(state: LbState) -> list[str]:
    """What the programs could trip over in ``state`` (empty = nothing): a visible frontend whose
    reverse-NAT entry is not its own, a slot 1..count missing or naming an absent backend, an
    affinity match for an absent backend."""
    problems = []
    for fe, e in state.svc.items():
        if e.zero is not None and state.revnat.get(e.zero.rev_nat_id) != fe:
            problems.append(f"{fe}: reverse-NAT id {e.zero.rev_nat_id} does not name it")
        for i, b in enumerate(e.chosen()):
            if not b:
                problems.append(f"{fe}: slot {i + 1} missing under count {len(e.chosen())}")
            elif b not in state.backends:
                problems.append(f"{fe}: slot {i + 1} names absent backend {b}")
    for r, bs in state.aff_match.items():
        for b in bs:
            if b not in state.backends:
                problems.append(f"affinity match ({b}, {r}) names an absent backend")
    return problems


def nodeports_of(desired: Mapping[Frontend, FrontendPlan]) -> set[tuple[int, int]]:
    """(port, proto) of every NodePort frontend: what bind4 keeps host processes off."""
    return {(fe.port, fe.proto) for fe, fp in desired.items() if fp.type_flag == F_NODE_PORT}
