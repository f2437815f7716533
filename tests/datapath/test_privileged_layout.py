"""C structs (bpf/include/nm_maps.h) and their ctypes mirrors (services/datapath/maps.py) agree.

Reads the BTF of the program BCC loaded (``bpftool prog show`` → btf_id → ``bpftool btf dump``) and
compares every mirrored struct's size and each field's name and offset.
"""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest

from services.datapath.maps import LAYOUT_STRUCTS
from testkit.datapath_node import TNode

pytestmark = pytest.mark.privileged


def _btf_structs(prog_fd_owner: TNode) -> dict[str, dict[str, object]]:
    progs = json.loads(subprocess.check_output(["bpftool", "prog", "show", "-j"]))
    # our program: the newest nm_from_pod whose maps include our pinned policy map
    policy_id = prog_fd_owner.maps.policy.fd
    info = json.loads(
        subprocess.check_output(
            ["bpftool", "map", "show", "pinned", f"{prog_fd_owner.loader.pin_dir}/nm_policy", "-j"]
        )
    )
    mine = [p for p in progs if p.get("name") == "nm_from_pod" and info["id"] in p.get("map_ids", [])]
    assert mine, f"no loaded nm_from_pod uses map {info['id']} (fd {policy_id})"
    btf = json.loads(subprocess.check_output(["bpftool", "btf", "dump", "id", str(mine[-1]["btf_id"]), "-j"]))
    return {t["name"]: t for t in btf["types"] if t.get("kind") == "STRUCT" and t.get("name")}


def test_privileged_struct_layouts_match_btf(make_node) -> None:  # type: ignore[no-untyped-def]
    structs = _btf_structs(make_node())
    for cname, pytype in LAYOUT_STRUCTS.items():
        assert cname in structs, f"struct {cname} not in the program's BTF"
        c = structs[cname]
        assert c["size"] == ctypes.sizeof(pytype), (
            f"{cname}: C {c['size']} bytes, Python {ctypes.sizeof(pytype)}"
        )
        c_fields = [(m["name"], m["bits_offset"] // 8) for m in c["members"]]  # type: ignore[index]
        py_fields = [(name, getattr(pytype, name).offset) for name, *_ in pytype._fields_]
        assert c_fields == py_fields, f"{cname}: C {c_fields} != Python {py_fields}"
