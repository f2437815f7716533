"""A second local cluster on the same machine is refused with a clear error, not started half-broken.

Local clusters share machine-wide addresses and programs (docs/local-mode.md, "One cluster per
machine"). A cluster is recognised by its processes' data-directory marker, as `down` finds them; a
process carrying another directory's marker stands in for a running cluster (nothing is started).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from localcluster.cleanup import MARKER_ENV, cluster_pids


def nm(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshctl.main", "--data-dir", str(d), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_refuses_while_another_cluster_runs(tmp_path: Path) -> None:
    demo, mine = tmp_path / "demo", tmp_path / "tests"
    demo.mkdir()
    env = {MARKER_ENV: str(demo), "PATH": os.environ["PATH"]}
    running = subprocess.Popen(["sleep", "60"], env=env)
    try:
        out = nm(mine, "up", "--nodes", "1", "--timeout", "5")
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stdout.startswith("error: another nodemesh local cluster runs from ")
        assert f"{demo} (1 process(es))" in out.stdout  # (and any other cluster up on this machine)
        assert f"nodemesh --data-dir {demo} down" in out.stdout
        assert not (mine / "run" / "supervisor.pid").exists() and cluster_pids(mine) == []
        assert running.poll() is None  # the other cluster is left alone
    finally:
        running.kill()
        running.wait()
