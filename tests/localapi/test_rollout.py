"""Rollout arithmetic (pure), table-driven against what kube-controller-manager does."""

from __future__ import annotations

import pytest

from localcluster.apiserver.controllers.rollout import RsState, plan, resolve

ROLLING: dict[str, object] = {}
RECREATE = {"type": "Recreate"}


@pytest.mark.parametrize(
    ("value", "total", "up", "out"),
    [
        ("25%", 1, True, 1),
        ("25%", 1, False, 0),
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        (2, 10, True, 2),
        ("bogus%", 4, True, 0),
        (None, 4, True, 0),
    ],
)
def test_resolve(value: object, total: int, up: bool, out: int) -> None:
    assert resolve(value, total, up) == out


@pytest.mark.parametrize(
    ("want", "strategy", "new", "old", "old_pods", "expected"),
    [
        # Fresh Deployment: straight to the desired count.
        (3, ROLLING, RsState(0, 0), [], 0, (3, [])),
        # Scale changes are immediate.
        (5, ROLLING, RsState(3, 3), [], 0, (5, [])),
        (1, ROLLING, RsState(3, 3), [], 0, (1, [])),
        # 1 replica: surge 1, unavailable 0 → new grows to 1, old waits for it to be available.
        (1, ROLLING, RsState(0, 0), [RsState(1, 1)], 1, (1, [1])),
        (1, ROLLING, RsState(1, 0), [RsState(1, 1)], 1, (1, [1])),
        (1, ROLLING, RsState(1, 1), [RsState(1, 1)], 1, (1, [0])),
        # 4 replicas: surge 1, unavailable 1 → new +1; then old -1 (keep 3 available).
        (4, ROLLING, RsState(0, 0), [RsState(4, 4)], 4, (1, [4])),
        (4, ROLLING, RsState(1, 0), [RsState(4, 4)], 4, (1, [3])),
        (4, ROLLING, RsState(2, 1), [RsState(3, 3)], 3, (2, [2])),
        # Unhealthy old replicas go first, even when availability allows no scale-down.
        (4, ROLLING, RsState(4, 2), [RsState(2, 0)], 2, (4, [1])),
        # maxUnavailable 0 with nothing available: stuck, as Kubernetes is.
        (2, ROLLING, RsState(2, 0), [RsState(2, 0)], 2, (2, [2])),
        # maxSurge 0 and maxUnavailable 0 is not allowed: unavailable becomes 1.
        (
            2,
            {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}},
            RsState(0, 0),
            [RsState(2, 2)],
            2,
            (0, [1]),
        ),
        # Recreate: old to 0 first; new only when no old pod is left.
        (2, RECREATE, RsState(0, 0), [RsState(2, 2)], 2, (0, [0])),
        (2, RECREATE, RsState(0, 0), [RsState(0, 0)], 1, (0, [0])),
        (2, RECREATE, RsState(0, 0), [RsState(0, 0)], 0, (2, [0])),
    ],
)
def test_plan(
    want: int,
    strategy: dict[str, object],
    new: RsState,
    old: list[RsState],
    old_pods: int,
    expected: tuple[int, list[int]],
) -> None:
    assert plan(want, strategy, new, old, old_pods) == expected
