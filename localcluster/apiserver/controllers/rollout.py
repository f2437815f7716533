"""How many replicas each ReplicaSet of a Deployment should have next (Kubernetes' rollout rules).

Pure arithmetic, following kube-controller-manager's ``rolloutRolling``/``rolloutRecreate``:

- RollingUpdate (default ``maxSurge``/``maxUnavailable`` 25%, surge rounded up, unavailable
  down, not both 0): first grow the new ReplicaSet while the total stays within
  ``replicas + maxSurge``; once it cannot grow, shrink old ones, unhealthy replicas first, while
  at least ``replicas - maxUnavailable`` stay available. Old pods go only as new ones become
  ready.
- Recreate: every old ReplicaSet to 0, and the new one up only once no old pod is left.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

__all__ = ["RsState", "plan", "resolve"]


class RsState(msgspec.Struct, frozen=True):
    replicas: int  # spec.replicas
    available: int  # status.availableReplicas


def resolve(value: Any, total: int, round_up: bool) -> int:
    """An IntOrString (``2`` or ``"25%"``) against ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            return 0
        exact = pct * total / 100
        return max(0, math.ceil(exact) if round_up else math.floor(exact))
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def plan(
    want: int, strategy: dict[str, Any], new: RsState, old: list[RsState], old_pods: int
) -> tuple[int, list[int]]:
    """(new ReplicaSet's replicas, each old one's replicas; oldest first)."""
    targets = [o.replicas for o in old]
    if strategy.get("type") == "Recreate":
        if any(targets) or old_pods:
            return new.replicas if new.replicas <= 0 else 0, [0] * len(old)
        return want, targets
    ru = strategy.get("rollingUpdate") or {}
    surge = resolve(ru.get("maxSurge", "25%"), want, True)
    unavailable = resolve(ru.get("maxUnavailable", "25%"), want, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    all_count = new.replicas + sum(targets)
    if new.replicas > want:
        return want, targets
    if new.replicas < want:
        grow = min(want + surge - all_count, want - new.replicas)
        if grow > 0:
            return new.replicas + grow, targets  # scale up first; old ones next pass
    if not any(targets):
        return new.replicas, targets
    min_available = want - unavailable
    max_scaled_down = all_count - min_available - (new.replicas - new.available)
    if max_scaled_down <= 0:
        return new.replicas, targets
    cleaned = 0
    for i, o in enumerate(old):  # unhealthy old replicas go first: they serve nothing
        unhealthy = max(0, o.replicas - o.available)
        step = min(max_scaled_down - cleaned, unhealthy)
        if step > 0:
            targets[i] -= step
            cleaned += step
    available = new.available + sum(o.available for o in old)
    budget = available - min_available
    for i in range(len(old)):
        if budget <= 0:
            break
        step = min(targets[i], budget)
        targets[i] -= step
        budget -= step
    return new.replicas, targets
