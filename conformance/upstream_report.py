"""The run as an upstream ``ConformanceReport`` (gateway.networking.k8s.io/v1, conformance/apis/v1).

The Gateway API project collects these reports per implementation and version. The layout follows
upstream's Go types: ``implementation``, ``date``, ``gatewayAPIVersion``, ``gatewayAPIChannel``,
``mode`` and one entry per profile with ``core`` and ``extended`` results (``success``/``partial``/
``failure``), statistics (``Passed``/``Failed``/``Skipped``), the tests that failed or were not checked,
and the extended features claimed supported.

Profiles are upstream's: a case belongs to GATEWAY-GRPC when it needs GRPCRoute, to GATEWAY-TLS when it
needs TLSRoute and no HTTPRoute, otherwise to GATEWAY-HTTP. Its level is the corpus's ``core/`` or
``extended/`` prefix. A case the runner could not really check (``CaseResult.unchecked``) is reported as
skipped, which makes its level ``partial``: it is never counted as passed.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from nodemesh import __version__

from .runner import CaseResult

__all__ = ["IMPLEMENTATION", "conformance_report", "profile_of", "write_conformance_report"]

# url and contact are the publisher's to give (``--implementation-url``, ``--contact``); upstream needs
# both filled before it accepts a report.
IMPLEMENTATION: dict[str, Any] = {
    "organization": "nodemesh",
    "project": "nodemesh",
    "url": "",
    "version": __version__,
    "contact": [],
}

PROFILES = ("GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC")


def profile_of(features_required: list[str]) -> str:
    """The upstream profile a case's required features put it in."""
    fs = set(features_required)
    if "GRPCRoute" in fs:
        return "GATEWAY-GRPC"
    if "TLSRoute" in fs and "HTTPRoute" not in fs:
        return "GATEWAY-TLS"
    return "GATEWAY-HTTP"


def _status(results: list[CaseResult]) -> dict[str, Any]:
    passed = [r for r in results if r.outcome == "passed"]
    failed = [r for r in results if r.outcome == "failed"]
    skipped = [r for r in results if r.outcome == "not checked"]
    result = "failure" if failed else ("partial" if skipped else "success")
    out: dict[str, Any] = {
        "result": result,
        "statistics": {"Failed": len(failed), "Passed": len(passed), "Skipped": len(skipped)},
    }
    if skipped:
        out["skippedTests"] = sorted(r.name for r in skipped)
    if failed:
        out["failedTests"] = sorted(r.name for r in failed)
    return out


def conformance_report(
    results: list[CaseResult],
    index: list[dict[str, Any]],
    *,
    gateway_api_version: str,
    channel: str = "experimental",
    mode: str = "default",
    date: str | None = None,
    implementation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ConformanceReport of ``results`` (pure: the caller writes it)."""
    required = {str(c.get("name")): [str(f) for f in c.get("features_required") or []] for c in index}
    by_profile: dict[str, dict[str, list[CaseResult]]] = {}
    features: dict[str, set[str]] = {}
    for r in results:
        prof = profile_of(required.get(r.name, []))
        level = "extended" if r.feature.startswith("extended/") else "core"
        by_profile.setdefault(prof, {}).setdefault(level, []).append(r)
        if level == "extended":
            features.setdefault(prof, set()).add(r.feature.split("/", 1)[1])
    profiles: list[dict[str, Any]] = []
    for prof in PROFILES:
        levels = by_profile.get(prof)
        if not levels:
            continue
        core = _status(levels.get("core", []))
        n = sum(len(v) for v in levels.values())
        ok = sum(r.outcome == "passed" for v in levels.values() for r in v)
        entry: dict[str, Any] = {
            "name": prof,
            "summary": f"{ok} of {n} tests passed ({core['result']} at core level)",
            "core": core,
        }
        ext_results = levels.get("extended", [])
        if ext_results:
            ext = _status(ext_results)
            ext["supportedFeatures"] = sorted(features.get(prof, set()))
            entry["extended"] = ext
        profiles.append(entry)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "implementation": {**IMPLEMENTATION, **(implementation or {})},
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gatewayAPIVersion": gateway_api_version,
        "gatewayAPIChannel": channel,
        "mode": mode,
        "profiles": profiles,
    }


def write_conformance_report(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(report, f, sort_keys=False)
