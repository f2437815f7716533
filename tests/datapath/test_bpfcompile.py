"""The compile step (services/datapath/bpfcompile.py): BCC runs in a child process, the agent gets
fds back and never maps LLVM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.datapath.bpfcompile import CompileError, ProgSpec, compile_and_load
from services.datapath.maps import PINNED_MAPS


def test_a_compile_error_is_raised_with_the_compilers_message(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int nm_prog(struct __sk_buff *skb) { return undefined_symbol; }\n")
    with pytest.raises(CompileError) as e:
        compile_and_load(str(src), [], [ProgSpec("nm_prog", 3)], [])
    assert "undefined_symbol" in str(e.value)


_PROBE = """
import json, os, sys
from services.datapath.loader import Loader
root = sys.argv[1]
ld = Loader("probe", pin_root=root)
ld.load()
maps = open("/proc/self/maps").read()
print(json.dumps({
    "bcc_imported": "bcc" in sys.modules,
    "llvm_mapped": "libLLVM" in maps or "libbcc" in maps or "libclang" in maps,
    "progs": [ld.from_fd > 0, ld.to_fd > 0],
    "stat": ld.stat(0),
    "pins": sorted(os.listdir(ld.pin_dir)),
}))
ld.close()
"""


@pytest.mark.privileged
def test_privileged_the_agent_loads_programs_without_llvm_in_its_process(pin_root: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, pin_root], capture_output=True, text=True, timeout=300, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bcc_imported"] is False
    assert res["llvm_mapped"] is False
    assert res["progs"] == [True, True]
    assert res["stat"] == 0  # the per-CPU counters are readable through the handed-over fd
    assert set(res["pins"]) == set(PINNED_MAPS)  # the compile step pins nothing of its own
