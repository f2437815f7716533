"""The venv runs what pyproject.toml declares, whatever Python packages Debian has installed (issue #17).

A venv made with --system-site-packages let pip take Debian's requests 2.28 as satisfying the kubernetes
client and install only a newer urllib3 next to it: the suite then failed at import. `make install` now
makes a venv that does not see Debian's site-packages and links in only Debian's BCC bindings, which are
not on PyPI. CI installs Debian's python3-requests, -yaml, -cryptography and -grpcio on purpose, so these
tests fail on any venv that would pick them up.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "nodemesh"
EXTRAS = frozenset({"test"})  # `make install` installs '.[test]'
VENV = Path(sys.prefix).resolve()


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether `req` is needed here, for a distribution installed with `extras`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras | {""})


def declared_distributions() -> dict[str, md.Distribution | None]:
    """The project and every distribution it requires, transitively (None: required, not installed).

    Each name is looked up the way `import` finds it: the first distribution on sys.path wins.
    """
    found: dict[str, md.Distribution | None] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(PROJECT, EXTRAS)]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            found[key] = None
            continue
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if _applies(req, extras):
                todo.append((req.name, frozenset(req.extras)))
    return found


def test_every_declared_dependency_resolves_inside_the_venv() -> None:
    dists = declared_distributions()
    assert len(dists) > 20, f"the walk found too little to mean anything: {sorted(dists)}"
    missing = sorted(name for name, dist in dists.items() if dist is None)
    # The project itself is this checkout (an editable install); everything else comes from PyPI.
    outside = sorted(
        f"{name} {dist.version} from {Path(str(dist.locate_file(''))).resolve()}"
        for name, dist in dists.items()
        if name != PROJECT
        and dist is not None
        and not Path(str(dist.locate_file(""))).resolve().is_relative_to(VENV)
    )
    assert not missing, f"declared but not installed in {VENV}: {missing} (run `make install`)"
    assert not outside, (
        f"declared dependencies resolved from outside the venv {VENV} (it sees a system site-packages; "
        f"`make install` rebuilds it): {outside}"
    )


def test_the_venv_does_not_see_debians_site_packages() -> None:
    # A fresh interpreter, so nothing the test run added to sys.path counts.
    probe = "import json, sys, sysconfig; print(json.dumps([sys.path, sysconfig.get_path('stdlib')]))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    path, stdlib = json.loads(out)
    stdlib_dir = Path(stdlib).resolve()
    checkout = Path(__file__).resolve().parents[2]  # the editable install's path entry (compat mode)
    foreign = [
        entry
        for entry in path
        if entry
        and Path(entry).resolve() != checkout
        and not Path(entry).resolve().is_relative_to(VENV)
        and not Path(entry).resolve().is_relative_to(stdlib_dir)
        and not entry.endswith(".zip")  # the (absent) zipped standard library
    ]
    assert not foreign, f"the venv's sys.path reaches outside the venv and the standard library: {foreign}"


def test_bcc_is_debians_package_linked_into_the_venv() -> None:
    import bcc

    where = Path(bcc.__file__).parent
    assert where.parent.resolve().is_relative_to(VENV), f"bcc is imported from {where}, not via the venv"
    assert where.is_symlink(), f"{where} should be a link to Debian's python3-bpfcc package"


@pytest.mark.privileged
def test_bcc_compiles_and_loads_a_program_in_the_venv() -> None:
    import bcc

    text = """
    BPF_ARRAY(seen, u64, 1);
    int filter(struct __sk_buff *skb) { return 0; }
    """
    with bcc.BPF(text=text) as b:
        prog = b.load_func("filter", bcc.BPF.SOCKET_FILTER)
        assert prog.fd >= 0
        seen = b["seen"]
        seen[ctypes.c_int(0)] = ctypes.c_ulonglong(17)
        assert seen[ctypes.c_int(0)].value == 17
