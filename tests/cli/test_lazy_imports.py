"""The CLI's light verbs import only what they need (meshctl/main.py: one module per verb, heavy
dependencies inside the verbs that use them). Checked on ``sys.modules`` after a real run in a fresh
interpreter — not on time, which depends on the machine."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshctl
from meshctl.main import VERB_MODULES

# What none of the light verbs may load: netlink, the supervisor and the datapath, BCC, schema
# validation, the Kubernetes client, gRPC, and aiohttp (nats-py's WebSocket transport).
HEAVY = (
    "pyroute2",
    "bcc",
    "services.datapath.cleanup",
    "localcluster.supervisor",
    "localcluster.apiserver",
    "validation",
    "jsonschema",
    "kubernetes",
    "grpc",
    "aiohttp",
    "prometheus_client",
)

_PROBE = """
import json, sys
from meshctl.main import main
sys.argv = ["nodemesh", *sys.argv[1:]]
try:
    main()  # as the console script calls it
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))
"""


def modules_after(data_dir: Path, *argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        env={"PATH": "/usr/bin:/bin", "NODEMESH_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    last = out.stdout.strip().splitlines()[-1]
    return set(json.loads(last))


def heavy_in(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_verb_table_matches_what_the_modules_register() -> None:
    registered: dict[str, str] = {}
    for mod in pkgutil.iter_modules(meshctl.__path__):
        if not mod.name.startswith("cmd_"):
            continue
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"meshctl.{mod.name}").register(sub)
        for verb in sub.choices:
            registered[verb] = mod.name
    assert registered == VERB_MODULES


def test_version_imports_no_command_module(tmp_path: Path) -> None:
    mods = modules_after(tmp_path, "version")
    assert not [m for m in mods if m.startswith("meshctl.cmd_")]
    assert heavy_in(mods) == []


def test_get_against_an_api_server_stays_light(api_cluster: Path) -> None:
    mods = modules_after(api_cluster, "get", "pods", "-A")
    assert "localcluster.apiclient" in mods  # it did talk to the API server
    assert heavy_in(mods) == []
    assert "yaml" not in mods  # only -o yaml needs it


@pytest.mark.parametrize("argv", [("status",), ("status", "-o", "json"), ("observe", "--last", "5")])
def test_status_and_observe_stay_light(tmp_path: Path, argv: tuple[str, ...]) -> None:
    mods = modules_after(tmp_path, *argv)
    assert heavy_in(mods) == []
    assert [m for m in mods if m.startswith("meshctl.cmd_")] == [f"meshctl.{VERB_MODULES[argv[0]]}"]


def test_help_still_lists_every_verb(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshctl.main", "--help"],
        env={"PATH": "/usr/bin:/bin", "NODEMESH_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for verb in [*VERB_MODULES, "version"]:
        assert verb in out.stdout
