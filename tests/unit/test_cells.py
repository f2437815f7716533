"""Each service's cell declares every subject its code publishes or subscribes to.

NATS permissions are derived from the cells (nodemesh.natsauth), so a subject a service uses but
its cell lacks would be denied at run time. This reads each service's source for the subjects it
names (``subjects.X`` constants and ``subjects.f(...)`` builders) and checks each is covered.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from localcluster.cells import CELLS
from nodemesh import subjects
from nodemesh.cell import Cell
from nodemesh.natsauth import cell_permissions, user_permissions

ROOT = Path(__file__).resolve().parents[2]
# Builders of names, not subjects, and subjects only the CLI (admin) uses.
NOT_SUBJECTS = {"token", "untoken", "k8s_object", "k8s_kind", "parse_k8s_status", "parse_k8s_write"}


def covered(subject: str, patterns: tuple[str, ...]) -> bool:
    """Whether NATS pattern ``subject`` (wildcards allowed) lies within one of ``patterns``."""
    want = subject.split(".")
    for pat in patterns:
        have = pat.split(".")
        ok = True
        for i, tok in enumerate(have):
            if tok == ">":
                break
            if i >= len(want) or (tok != "*" and tok != want[i]) or (tok == "*" and want[i] == ">"):
                ok = False
                break
        else:
            ok = len(have) == len(want)
        if ok:
            return True
    return False


def used_subjects(cell: Cell) -> set[tuple[str, bool]]:
    """Every subject the service's modules name, with ``{node}`` for node and ``*`` for other args;
    and whether it came from a builder (whose other arguments the scan cannot know)."""
    out: set[tuple[str, bool]] = set()
    for path in (ROOT / "services" / cell.name).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            if node.value.id != "subjects" or node.attr in NOT_SUBJECTS or node.attr.startswith("_"):
                continue
            value = getattr(subjects, node.attr)
            if isinstance(value, str):
                out.add((value, False))
            elif callable(value):
                params = inspect.signature(value).parameters
                args = ["{node}" if p == "node" and cell.per_node else "*" for p in params]
                out.add((value(*args), any(a == "*" for a in args)))
    return out


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_every_subject_a_service_names_is_declared(cell: Cell) -> None:
    used = used_subjects(cell)
    declared = cell.publishes + cell.subscribes
    # A service that declares subjects but names none means the scan is broken (dns declares none:
    # it only replays stream K8S, which needs no subject of its own).
    assert used or not declared, f"services/{cell.name} names no subject: the scan is broken"

    def ok(subject: str, built: bool) -> bool:
        if covered(subject, declared):
            return True
        # A builder called with arguments the scan cannot see (e.g. a policy kind): the cell must
        # declare at least one concrete use of it.
        prefix = subject.split("*", 1)[0]
        return built and any(d.startswith(prefix) for d in declared)

    missing = sorted(s for s, built in used if not ok(s, built))
    assert not missing, f"services/{cell.name}/cell.py lacks {missing}"


def test_permissions_are_exactly_the_cells() -> None:
    perms = user_permissions(CELLS, ["node-a", "node-b"])
    assert set(perms) == {"admin", "watcher", "identity", "xds", "operator", "dns"} | {
        f"{s}-{n}" for s in ("datapath", "authd") for n in ("node-a", "node-b")
    }
    authd_a = perms["authd-node-a"]
    # A node's user acts for that node only.
    assert "svid.sign.node-a" in authd_a.publish and "svid.sign.node-b" not in authd_a.publish
    assert "$KV.auth.node-a.>" in authd_a.publish and not any("node-b" in s for s in authd_a.publish)
    # Only the watcher publishes cluster state; only identity writes identities.
    assert [u for u, p in perms.items() if subjects.K8S_OBJ_ALL in p.publish] == ["watcher"]
    assert [u for u, p in perms.items() if "$KV.identities.>" in p.publish] == ["identity"]
    # Only the operator asks for object writes, and only the watcher answers them.
    assert [u for u, p in perms.items() if subjects.K8S_WRITE_ALL in p.publish and u != "admin"] == [
        "operator"
    ]
    assert [u for u, p in perms.items() if subjects.K8S_WRITE_ALL in p.subscribe and u != "admin"] == [
        "watcher"
    ]
    assert cell_permissions(CELLS[0]) == perms["watcher"]


def test_a_subject_outside_the_cell_is_reported() -> None:
    assert not covered("auth.granted.{node}", ("auth.required.{node}", "flows.{node}"))
    assert covered("k8s.status.pod.*.*", ("k8s.status.>",))
    assert not covered("k8s.status.>", ("k8s.status.pod.*.*",))
