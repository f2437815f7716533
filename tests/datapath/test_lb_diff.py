"""The LB diff: every intermediate state is consistent, a leaving backend is never chosen again once
the first op concerning it ran, and one Service's change touches only its own frontends."""

from __future__ import annotations

import random

import pytest

from services.datapath.lb.diff import (
    DelBackend,
    DelSlot,
    LbState,
    Op,
    PutBackend,
    PutNodePort,
    PutSlot,
    check_consistent,
    diff,
    nodeports_of,
)
from services.datapath.lb.model import (
    BE_ACTIVE,
    BE_TERMINATING,
    F_AFFINITY,
    F_CLUSTER_IP,
    F_NODE_PORT,
    Backend,
    Frontend,
    FrontendPlan,
    ServiceRef,
)

FE = Frontend("10.96.0.10", 80, 6)
FE2 = Frontend("10.96.0.11", 53, 17)
REF = ServiceRef("default", "web")


def be(i: int, port: int = 8080) -> Backend:
    return Backend(f"10.244.1.{i}", port, 6)


def plan(*backends: Backend, fe: Frontend = FE, timeout: int = 0, state: int = BE_ACTIVE) -> FrontendPlan:
    return FrontendPlan(
        fe, REF, F_CLUSTER_IP, tuple(backends), tuple(state for _ in backends), affinity_timeout=timeout
    )


def run(state: LbState, desired: dict[Frontend, FrontendPlan], **kw: object) -> list[Op]:
    """Apply the diff op by op, checking after each that the programs could act safely, and that a
    backend leaving a frontend, once out of its choice, never comes back into it."""
    before = {fe: {state.backends[b][0] for b in state.reachable(fe)} for fe in state.svc}
    ops = diff(state, desired, **kw)  # type: ignore[arg-type]
    gone: dict[Frontend, set[Backend]] = {}
    for op in ops:
        state.apply(op)
        assert check_consistent(state) == [], op
        for fe, fp in desired.items():
            now = {state.backends[b][0] for b in state.reachable(fe)}
            leaving = before.get(fe, set()) - set(fp.backends)
            out = leaving - now
            assert not (gone.get(fe, set()) & now), f"{op}: a removed backend came back"
            gone[fe] = gone.get(fe, set()) | out
            assert now <= before.get(fe, set()) | set(fp.backends), f"{op}: a backend from nowhere"
    return ops


def backends_of(state: LbState, fe: Frontend) -> list[Backend]:
    e = state.svc[fe]
    return [state.backends[b][0] for b in e.chosen()]


def test_new_frontend_slots_before_slot_zero_and_backends_first() -> None:
    st = LbState()
    ops = run(st, {FE: plan(be(1), be(2))})
    kinds = [type(o).__name__ for o in ops]
    assert kinds.index("PutBackend") < kinds.index("PutSlot")
    slot_ops = [o for o in ops if isinstance(o, PutSlot)]
    assert slot_ops[-1].slot == 0 and slot_ops[-1].zero is not None and slot_ops[-1].zero.count == 2
    assert sorted(backends_of(st, FE)) == [be(1), be(2)]
    assert diff(st, {FE: plan(be(1), be(2))}) == []  # converged: nothing to write


def test_removal_overwrites_in_place_then_shrinks() -> None:
    st = LbState()
    run(st, {FE: plan(be(1), be(2), be(3))})
    ops = run(st, {FE: plan(be(1), be(3))})
    # b2's slot is overwritten first (b2 out of the choice at once), then count, then the tail goes
    slots = [o for o in ops if isinstance(o, PutSlot | DelSlot)]
    assert isinstance(slots[0], PutSlot) and slots[0].slot != 0
    zero_at = next(i for i, o in enumerate(slots) if isinstance(o, PutSlot) and o.slot == 0)
    assert all(isinstance(o, DelSlot) for o in slots[zero_at + 1 :])
    assert sorted(backends_of(st, FE)) == [be(1), be(3)]
    assert [o for o in ops if isinstance(o, DelBackend)]  # b2 unreferenced: gone
    assert be(2) not in st.be_ids


def test_grow_writes_tail_then_count_and_keeps_existing_slots() -> None:
    st = LbState()
    run(st, {FE: plan(be(1), be(2))})
    first = list(st.svc[FE].chosen())
    ops = run(st, {FE: plan(be(1), be(2), be(3), be(4))})
    assert st.svc[FE].chosen()[:2] == first  # staying backends kept their slots
    slot_ops = [o for o in ops if isinstance(o, PutSlot)]
    assert [o.slot for o in slot_ops] == [3, 4, 0]


def test_last_backend_gone_refuses_first() -> None:
    st = LbState()
    run(st, {FE: plan(be(1), be(2))})
    ops = run(st, {FE: plan()})
    slots = [o for o in ops if isinstance(o, PutSlot | DelSlot)]
    assert isinstance(slots[0], PutSlot) and slots[0].slot == 0 and slots[0].zero is not None
    assert slots[0].zero.count == 0
    assert st.svc[FE].zero is not None and st.svc[FE].zero.count == 0 and not st.svc[FE].slots


def test_frontend_removed_slot_zero_first_then_everything() -> None:
    st = LbState()
    run(st, {FE: plan(be(1), be(2), timeout=60)})
    assert st.aff_match
    ops = run(st, {})
    assert isinstance(ops[0], DelSlot) and ops[0].slot == 0
    assert st.svc == {} and st.backends == {} and st.revnat == {} and st.aff_match == {}


def test_only_scope_touches_one_service() -> None:
    st = LbState()
    run(st, {FE: plan(be(1)), FE2: plan(Backend("10.244.2.1", 53, 17), fe=FE2)})
    ops = diff(st, {FE: plan(be(1), be(2)), FE2: plan(fe=FE2)}, only=[FE])
    assert {o.frontend for o in ops if isinstance(o, PutSlot | DelSlot)} == {FE}
    for op in ops:
        st.apply(op)
    assert st.svc[FE2].zero is not None and st.svc[FE2].zero.count == 1


def test_shared_backend_survives_until_last_frontend_drops_it() -> None:
    st = LbState()
    run(st, {FE: plan(be(1)), FE2: plan(be(1), fe=FE2)})
    run(st, {FE: plan(), FE2: plan(be(1), fe=FE2)}, only=[FE])
    assert be(1) in st.be_ids
    run(st, {FE: plan(), FE2: plan(fe=FE2)}, only=[FE2])
    assert be(1) not in st.be_ids


def test_state_and_flags_changes_rewrite_in_place() -> None:
    st = LbState()
    run(st, {FE: plan(be(1))})
    ops = run(st, {FE: plan(be(1), state=BE_TERMINATING, timeout=30)})
    assert [type(o) for o in ops if isinstance(o, PutBackend)] == [PutBackend]
    zero = st.svc[FE].zero
    assert zero is not None and zero.flags & F_AFFINITY and zero.affinity_timeout == 30
    assert st.backends[st.be_ids[be(1)]][1] == BE_TERMINATING


def test_rev_nat_ids_are_stable_and_unique() -> None:
    st = LbState()
    run(st, {FE: plan(be(1)), FE2: plan(fe=FE2)})
    ids = {fe: st.svc[fe].zero.rev_nat_id for fe in (FE, FE2)}  # type: ignore[union-attr]
    assert len(set(ids.values())) == 2
    run(st, {FE: plan(be(2)), FE2: plan(be(3), fe=FE2)})
    assert {fe: st.svc[fe].zero.rev_nat_id for fe in (FE, FE2)} == ids  # type: ignore[union-attr]
    assert st.revnat == {v: k for k, v in ids.items()}


def test_interrupted_write_is_finished_by_the_next_diff() -> None:
    st = LbState()
    ops = diff(st, {FE: plan(be(1), be(2), be(3))})
    for op in ops[: len(ops) - 3]:  # crash before slot 0 was written
        st.apply(op)
    assert st.svc[FE].zero is None
    run(st, {FE: plan(be(1), be(2))})
    assert sorted(backends_of(st, FE)) == [be(1), be(2)]
    assert set(st.svc[FE].slots) == {1, 2}


def test_nodeport_guard_follows_nodeport_frontends() -> None:
    st = LbState()
    np = Frontend("127.0.50.1", 30080, 6)
    desired = {np: FrontendPlan(np, REF, F_NODE_PORT, (be(1),), (BE_ACTIVE,))}
    ops = run(st, desired, nodeports=nodeports_of(desired))
    assert PutNodePort(30080, 6) in ops and st.nodeports == {(30080, 6)}
    run(st, {}, nodeports=set())
    assert st.nodeports == set()


@pytest.mark.parametrize("seed", range(40))
def test_random_churn_never_inconsistent(seed: int) -> None:
    rng = random.Random(seed)
    st = LbState()
    fes = [Frontend(f"10.96.0.{i}", 80, 6) for i in range(1, 5)]
    for _ in range(30):
        desired = {}
        for fe in fes:
            if rng.random() < 0.8:
                n = rng.randint(0, 8)
                desired[fe] = plan(*sorted(be(rng.randint(1, 12)) for _ in range(n) if True), fe=fe)
                # duplicates collapse as the planner dedups backends
                desired[fe] = plan(*sorted(set(desired[fe].backends)), fe=fe, timeout=rng.choice((0, 60)))
        only = rng.sample(fes, rng.randint(1, len(fes))) if rng.random() < 0.5 else None
        run(st, desired, only=only)
        for fe in only or fes:
            if fe in desired:
                assert sorted(backends_of(st, fe)) == sorted(desired[fe].backends)
            else:
                assert fe not in st.svc
    # a full diff converges to nothing to do, and nothing unreferenced is left
    full = {fe: p for fe, p in desired.items()}
    run(st, full)
    assert diff(st, full) == []
    assert set(st.backends) == set(st.refs)


def test_full_diff_collects_orphans_of_an_interrupted_run() -> None:
    st = LbState()
    run(st, {FE: plan(be(1), timeout=60)})
    rev = st.svc[FE].zero.rev_nat_id  # type: ignore[union-attr]
    # what a crash between "slot 0 deleted" and the rest leaves behind
    from services.datapath.lb.diff import DelSlot as D

    st.apply(D(FE, 0))
    assert st.revnat and st.aff_match
    run(st, {})
    assert st.svc == {} and st.revnat == {} and st.aff_match == {} and st.backends == {}
    assert rev not in st.revnat
