"""Keep serving when one object makes translation fail: find it, leave it out, translate the rest.

Translation is meant never to raise, but a malformed object it does not expect must not freeze the
whole control plane (every Gateway of every tenant) at its last state, nor — on a fresh start — leave
Envoy with nothing. :func:`translate_isolating` first translates everything; if that raises, it
bisects the *suspects* (objects changed since the last successful translation; all of them on the
first one) against the rest, which translated before, and returns the translation without the
objects that make it fail, plus their keys. With k bad objects among n suspects this costs
O(k·log n) extra translations, only on the failure path. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["ObjRef", "translate_isolating"]

ObjRef = tuple[str, str, str]  # (kind, namespace, name)
T = TypeVar("T")
Objects = Mapping[str, Mapping[tuple[str, str], dict[str, Any]]]  # kind → (ns, name) → object


def _select(objects: Objects, keep: Callable[[ObjRef], bool]) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: [o for (ns, name), o in objs.items() if keep((kind, ns, name))]
        for kind, objs in objects.items()
    }


def translate_isolating(
    run: Callable[[dict[str, list[dict[str, Any]]]], T],
    objects: Objects,
    suspects: Collection[ObjRef],
    excluded: Collection[ObjRef] = (),
    kind_order: Sequence[str] = (),
) -> tuple[T, set[ObjRef], BaseException | None]:
    """``run`` over ``objects`` minus ``excluded``; on an exception, minus the suspects that cause it.

    ``kind_order`` lists kinds referenced-first (GatewayClass before Gateway before HTTPRoute): a
    failure that needs two objects (a class and a broken Gateway of that class) is then blamed on
    the referencing one, because bisection adds suspects in that order.
    Returns (result, left-out suspects, the first error). Raises only if even the objects outside
    ``suspects`` fail (then nothing better than the last good result exists).
    """
    excluded = set(excluded)
    try:
        return run(_select(objects, lambda r: r not in excluded)), set(), None
    except Exception as e:
        first: BaseException = e
    rank = {k: i for i, k in enumerate(kind_order)}
    pool = sorted(set(suspects) - excluded, key=lambda r: (rank.get(r[0], len(rank)), r))
    fixed = {(k, ns, n) for k, objs in objects.items() for (ns, n) in objs} - set(pool) - excluded

    def ok(extra: list[ObjRef]) -> bool:
        allowed = fixed | set(extra)
        try:
            run(_select(objects, lambda r: r in allowed))
        except Exception:
            return False
        return True

    if not ok([]):
        raise first

    def split(base: list[ObjRef], cand: list[ObjRef]) -> tuple[list[ObjRef], list[ObjRef]]:
        if not cand or ok(base + cand):
            return cand, []
        if len(cand) == 1:
            return [], cand
        mid = len(cand) // 2
        good_a, bad_a = split(base, cand[:mid])
        good_b, bad_b = split(base + good_a, cand[mid:])
        return good_a + good_b, bad_a + bad_b

    good, bad = split([], pool)
    allowed = fixed | set(good)
    return run(_select(objects, lambda r: r in allowed)), set(bad), first
