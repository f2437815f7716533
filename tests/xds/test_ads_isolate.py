"""Left-out objects when translation raises: the broken ones, never their good neighbours."""

from __future__ import annotations

from typing import Any

import pytest

from services.xds.isolate import translate_isolating

ORDER = ("GatewayClass", "Gateway", "HTTPRoute")


def objs(**kinds: list[str]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    return {k: {("ns", n): {"name": n} for n in names} for k, names in kinds.items()}


def run(objects: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A translator that raises on any object named bad-*, but only when a GatewayClass exists."""
    names = sorted(o["name"] for os_ in objects.values() for o in os_)
    if objects.get("GatewayClass") and any(n.startswith("bad") for n in names):
        raise TypeError("boom")
    return names


def test_good_input_translates_once() -> None:
    res, bad, err = translate_isolating(run, objs(GatewayClass=["c"], Gateway=["g"]), suspects=[])
    assert res == ["c", "g"] and bad == set() and err is None


@pytest.mark.parametrize("n_good", [1, 7, 40])
def test_only_the_broken_objects_are_left_out(n_good: int) -> None:
    routes = [f"r{i}" for i in range(n_good)] + ["bad-1"]
    o = objs(GatewayClass=["c"], Gateway=["g", "bad-2"], HTTPRoute=routes)
    everything = [(k, ns, n) for k, d in o.items() for (ns, n) in d]
    res, bad, err = translate_isolating(run, o, everything, kind_order=ORDER)
    # The class is needed for the failure but it is the Gateway/route that is broken.
    assert bad == {("Gateway", "ns", "bad-2"), ("HTTPRoute", "ns", "bad-1")}
    assert isinstance(err, TypeError) and "c" in res and len(res) == n_good + 2


def test_excluded_stay_out_and_unchanged_failures_raise() -> None:
    o = objs(GatewayClass=["c"], Gateway=["bad-2"])
    res, bad, _ = translate_isolating(run, o, [], excluded=[("Gateway", "ns", "bad-2")])
    assert res == ["c"] and bad == set()
    with pytest.raises(TypeError):  # the failure is not among the suspects: nothing better to serve
        translate_isolating(run, o, suspects=[])
