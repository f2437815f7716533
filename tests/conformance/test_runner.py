"""The conformance runner end to end (standalone mode): real corpus cases pass, a wrong expectation fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance.cases import Generated, corpus_dir, load_case, load_index
from conformance.runner import run_case
from conformance.standalone import Standalone

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="Gateways bind ports 80/443 on loopback addresses")
pytestmark = [ROOT_ONLY, pytest.mark.envoy]

ROOT = corpus_dir()
CONTROLLER = "nodemesh.io/gateway-controller"
# Outside CI a checkout without ../shared skips these; in CI (which lays shared/ beside the clone) a
# missing corpus is a failure, so a skip can never hide the conformance gap.
_HAVE_CORPUS = (ROOT / "index.yaml").exists()
if os.environ.get("CI") and not _HAVE_CORPUS:
    raise RuntimeError(f"CI: the conformance corpus is missing at {ROOT}")
needs_corpus = pytest.mark.skipif(not _HAVE_CORPUS, reason=f"no corpus at {ROOT}")

# One case per area: routing, weights (statistics), gRPC, TLS passthrough, status-only with actions,
# HTTPS with SNI, a cross-namespace grant deleted mid-case.
CASES = [
    "HTTPRouteSimpleSameNamespace",
    "HTTPRouteWeight",
    "GRPCExactMethodMatching",
    "TLSRouteSimpleSameNamespace",
    "GatewayModifyListeners",
    "HTTPRouteHTTPSListener",
    "HTTPRouteReferenceGrant",
    "HTTPRouteRequestMirror",
]


@needs_corpus
def test_index_lists_sixty_cases() -> None:
    assert len(load_index(ROOT)) == 60


@needs_corpus
async def test_selected_cases_pass() -> None:
    gen = Generated()
    async with Standalone() as c:
        results = [
            await run_case(c, load_case(ROOT, n, "nodemesh", CONTROLLER), gen, CONTROLLER) for n in CASES
        ]
    failed = [(r.name, r.reason) for r in results if not r.passed]
    assert not failed


@needs_corpus
async def test_a_wrong_expectation_fails_with_a_reason(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT, corpus)
    case = corpus / "cases" / "HTTPRouteSimpleSameNamespace.yaml"
    case.chmod(0o644)
    case.write_text(
        case.read_text().replace(
            "backend: gateway-conformance-infra/infra-backend-v1",
            "backend: gateway-conformance-infra/infra-backend-v2",
        )
    )
    gen = Generated()
    async with Standalone() as c:
        r = await run_case(
            c,
            load_case(corpus, "HTTPRouteSimpleSameNamespace", "nodemesh", CONTROLLER),
            gen,
            CONTROLLER,
            scale=0.1,
        )
    assert not r.passed and "want prefix 'infra-backend-v2'" in r.reason


@needs_corpus
def test_cli_writes_a_report(tmp_path: Path) -> None:
    report = tmp_path / "conformance.md"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance",
            "--case",
            "HTTPRouteMatching",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS HTTPRouteMatching" in out.stdout
    assert "| `core/HTTPRoute` | 1/1 |" in report.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "conformance", "--case", "NoSuchCase"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown case" in bad.stderr


def test_cli_rejects_a_missing_or_corrupt_corpus(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conformance", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "cannot read the corpus index" in out.stderr
    (tmp_path / "index.yaml").write_text("cases: [ {name: Broken} ]\n")
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "Broken.yaml").write_text("name: [unclosed\n")
    out = subprocess.run(
        [sys.executable, "-m", "conformance", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "FAIL Broken" in out.stdout and "cannot read the case" in out.stdout


@needs_corpus
async def test_a_check_that_observes_nothing_is_not_checked_never_passed(tmp_path: Path) -> None:
    """A generation check with no change before it, and a readiness check over a namespace with no
    pods, cannot fail: the runner reports such a case as "not checked", not as passed."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT, corpus)
    case = corpus / "cases" / "HTTPRouteSimpleSameNamespace.yaml"
    case.chmod(0o644)
    case.write_text(
        case.read_text().replace(
            "status_expectations:\n",
            "status_expectations:\n"
            "- check: generation_changed\n"
            "  object: Gateway gateway-conformance-infra/same-namespace\n"
            "- check: namespaces_ready\n"
            "  namespaces: [gateway-conformance-nothing-here]\n",
            1,
        )
    )
    async with Standalone() as c:
        r = await run_case(
            c,
            load_case(corpus, "HTTPRouteSimpleSameNamespace", "nodemesh", CONTROLLER),
            Generated(),
            CONTROLLER,
        )
    assert not r.passed and r.outcome == "not checked", (r.reason, r.unchecked)
    assert any("generation_changed" in u and "no patch" in u for u in r.unchecked)
    assert any("no pods in gateway-conformance-nothing-here" in u for u in r.unchecked)


@needs_corpus
async def test_a_patch_that_leaves_the_generation_fails_the_generation_check() -> None:
    """GatewayModifyListeners' generation checks compare with the generation before the patch: with an
    API server that does not bump it, the case fails with the reason (it used to pass regardless)."""

    class NoBump(Standalone):
        def _upsert(self, obj: dict[str, Any]) -> None:
            m = obj.get("metadata") or {}
            old = self.get(str(obj.get("kind")), str(m.get("namespace", "")), str(m.get("name", "")))
            super()._upsert(obj)
            if old is not None:  # an API server that forgets to bump metadata.generation
                new = self.get(str(obj.get("kind")), str(m.get("namespace", "")), str(m.get("name", "")))
                assert new is not None
                new["metadata"]["generation"] = old["metadata"]["generation"]

    async with NoBump() as c:
        r = await run_case(
            c, load_case(ROOT, "GatewayModifyListeners", "nodemesh", CONTROLLER), Generated(), CONTROLLER, 0.2
        )
    assert r.outcome == "failed", (r.reason, r.unchecked)
    assert "generation_changed" in r.reason and "still" in r.reason
