"""Run corpus cases against a cluster with the exact retry and statistics rules of the README.

A cluster is anything with ``apply``, ``delete``, ``get``, ``list``, ``gateway_address``,
``ensure_backends``, ``pod_log`` and ``pods_ready`` (:class:`~conformance.standalone.Standalone`
implements them with translate + a real Envoy + echo processes).
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .cases import Case, Generated
from .checks import compare_grpc, compare_http, status_check
from .client import grpc_call, http_request, tls_exchange

__all__ = ["CaseFailed", "CaseResult", "Cluster", "expect_eventually", "run_case"]

T = TypeVar("T")

CHECK_TIMEOUTS = {
    "gateway_has_address": 180.0,
    "gateway_condition": 180.0,
    "namespaces_ready": 300.0,
}


class Cluster(Protocol):
    async def apply(self, objs: list[dict[str, Any]]) -> None: ...
    async def delete(self, objs: list[dict[str, Any]]) -> None: ...
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...
    def gateway_address(self, namespace: str, name: str) -> str: ...
    async def ensure_backends(
        self, backends: list[dict[str, Any]], tls_pairs: dict[str, tuple[bytes, bytes]]
    ) -> None: ...
    def pod_log(self, namespace: str, deployment_prefix: str) -> str: ...
    def pods_ready(self, namespace: str) -> bool: ...
    def pod_count(self, namespace: str) -> int: ...


@dataclass
class CaseResult:
    """One case's outcome. ``unchecked`` lists the checks the runner could not really perform (nothing
    to observe): such a case is "not checked", never passed, even when everything else held."""

    name: str
    feature: str
    passed: bool
    reason: str = ""
    seconds: float = 0.0
    provisional: bool = False
    unchecked: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """``passed``, ``failed`` or ``not checked``."""
        if self.passed:
            return "passed"
        return "not checked" if self.unchecked and not self.reason else "failed"


class CaseFailed(AssertionError):
    """A case's expectation did not hold (an AssertionError, so tests can use the runner directly)."""


class _Run:
    """What one case's run remembers between steps: generations before each patch (so a
    ``generation_changed`` check compares against something real) and the checks it could not make."""

    def __init__(self) -> None:
        self.generation_before: dict[tuple[str, str, str], Any] = {}
        self.unchecked: list[str] = []


def _object_ref(text: str) -> tuple[str, str, str]:
    """``"Gateway ns/name"`` -> (kind, ns, name)."""
    kind, _, ref = str(text).strip().partition(" ")
    ns, _, name = ref.partition("/")
    return kind, ns, name


def _generation_changed(c: Cluster, chk: dict[str, Any], run: _Run) -> str | None:
    """ "" when the object's generation moved since the patch before this phase, a reason when it did
    not, None when no patch of that object preceded (nothing to compare: not checkable)."""
    key = _object_ref(chk.get("object", ""))
    if key not in run.generation_before:
        return None
    obj = c.get(*key) or {}
    now = (obj.get("metadata") or {}).get("generation")
    before = run.generation_before[key]
    if now is None or now == before:
        return f"{key[0]} {key[1]}/{key[2]} generation still {now} after the patch"
    return ""


def _target(c: Cluster, target: dict[str, Any]) -> tuple[str, int]:
    ns, _, name = str(target.get("gateway", "")).partition("/")
    return c.gateway_address(ns, name), int(target.get("port") or 80)


async def _poll_status(c: Cluster, chk: dict[str, Any], controller: str, scale: float, run: _Run) -> None:
    if chk.get("check") == "generation_changed":
        why_gen = _generation_changed(c, chk, run)
        if why_gen is None:
            run.unchecked.append(f"generation_changed on {chk.get('object')}: no patch of it preceded")
        elif why_gen:
            raise CaseFailed(f"status generation_changed: {why_gen}")
        return
    timeout = CHECK_TIMEOUTS.get(chk.get("check", ""), 60.0) * scale
    interval = 1.0 if chk.get("check") == "route_no_accepted_parents" else 0.1
    deadline = time.monotonic() + timeout
    why = ""
    consecutive = 0
    while time.monotonic() < deadline:
        why = status_check(c, chk, controller)
        if not why:
            consecutive += 1
            # route_no_accepted_parents with empty parents must hold on two polls 1 s apart.
            if chk.get("check") != "route_no_accepted_parents" or consecutive >= 2:
                if chk.get("check") == "namespaces_ready":
                    # "every pod is Ready" holds vacuously where there is no pod: that observed nothing.
                    empty = [ns for ns in chk.get("namespaces") or [] if c.pod_count(ns) == 0]
                    if empty:
                        run.unchecked.append(f"namespaces_ready: no pods in {', '.join(empty)}")
                return
        else:
            consecutive = 0
        await asyncio.sleep(interval)
    raise CaseFailed(f"status {chk.get('check')} ({chk.get('subtest') or chk.get('gateway') or ''}): {why}")


def _attempt_http(c: Cluster, item: dict[str, Any], gen: Generated) -> str:
    addr, port = _target(c, item["target"])
    req = item["request"]
    if not addr:
        return "Gateway has no address"
    tls = req.get("tls") or {}
    pem = gen.trusted_pem(tls.get("trusted_certificate", ""))
    client = gen.key_pair(tls["client_certificate"]) if tls.get("client_certificate") else None
    resp = http_request(addr, port, req, pem, client_pair=client)
    return compare_http(resp, item.get("expect") or {}, req)


def _attempt_grpc(c: Cluster, item: dict[str, Any]) -> str:
    addr, port = _target(c, item["target"])
    if not addr:
        return "Gateway has no address"
    req = item["request"]
    return compare_grpc(grpc_call(addr, port, req), item.get("expect") or {}, str(req.get("rpc")))


def _attempt_tls(c: Cluster, item: dict[str, Any], gen: Generated) -> str:
    addr, port = _target(c, item["target"])
    req, exp = item["request"], item.get("expect") or {}
    try:
        data = tls_exchange(addr, port, (req.get("tls") or {}).get("server_name", ""), gen.ca_pair[0])
    except Exception as e:  # any failure of the exchange is a failed attempt
        return f"{type(e).__name__}: {e}"
    tj = exp.get("test_json") or {}
    if data.get("namespace") != tj.get("namespace"):
        return f"namespace {data.get('namespace')!r}"
    if not str(data.get("pod", "")).startswith(tj.get("pod_starts_with", "")):
        return f"pod {data.get('pod')!r}"
    if (data.get("tls") or {}).get("serverName") != tj.get("tls.serverName"):
        return f"serverName {(data.get('tls') or {}).get('serverName')!r}"
    return ""


def _kind(item: dict[str, Any]) -> str:
    proto = str((item.get("request") or {}).get("protocol", ""))
    if proto == "gRPC":
        return "grpc"
    if proto.startswith("TLS"):
        return "tls"
    return "http"


async def _request_item(c: Cluster, item: dict[str, Any], gen: Generated, scale: float) -> None:
    kind = _kind(item)
    mirrors = (item.get("expect") or {}).get("mirrored_to") or []
    before = {m["backend"]: len(_mirror_log(c, m["backend"])) for m in mirrors}
    need = 1 if kind == "tls" else 3
    deadline = time.monotonic() + 30.0 * scale
    ok, why = 0, ""
    while time.monotonic() < deadline:
        if kind == "grpc":
            why = await asyncio.to_thread(_attempt_grpc, c, item)
        elif kind == "tls":
            why = await asyncio.to_thread(_attempt_tls, c, item, gen)
        else:
            why = await asyncio.to_thread(_attempt_http, c, item, gen)
        if not why:
            ok += 1
            if ok >= need:
                break
        else:
            ok = 0
            await asyncio.sleep(0.1)
    if ok < need:
        raise CaseFailed(f"request {item.get('id')} {item.get('subtest') or ''}: {why}")
    for m in mirrors:
        line = f"Echoing back request made to {m['request_uri']} to client"
        deadline = time.monotonic() + 10.0 * scale
        while line not in _mirror_log(c, m["backend"])[before[m["backend"]] :]:
            if time.monotonic() > deadline:
                raise CaseFailed(
                    f"request {item.get('id')}: no mirror of {m['request_uri']} reached {m['backend']}"
                )
            await asyncio.sleep(0.2)


async def expect_eventually(
    c: Cluster,
    target: dict[str, Any],
    request: dict[str, Any],
    expect: dict[str, Any],
    gen: Generated | None = None,
    scale: float = 1.0,
) -> None:
    """Upstream's MakeRequestAndExpectEventuallyConsistentResponse: 3 consecutive passes within 30 s.

    ``request`` and ``expect`` use the corpus format (README §3); raises :class:`CaseFailed`.
    """
    item = {"id": "-", "target": target, "request": request, "expect": expect}
    await _request_item(c, item, gen or Generated(), scale)


def _mirror_log(c: Cluster, backend: str) -> str:
    ns, _, prefix = backend.partition("/")
    return c.pod_log(ns, prefix)


def _map(ex: ThreadPoolExecutor, fn: Callable[[int], T], n: int) -> list[T]:
    return list(ex.map(fn, range(n)))


def _backend_of(pod: str) -> str:
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


async def _weights(c: Cluster, dist: dict[str, Any]) -> None:
    addr, port = _target(c, dist["target"])
    req = dist["request"]
    grpc = req.get("protocol") == "gRPC"
    expected: dict[str, float] = dist.get("expected_fractions") or {}
    total = int(dist.get("total_requests") or 500)

    def one(_: int) -> str:
        jitter = {"X-Jitter": str(random.randrange(10000))} if random.random() < 0.5 else {}
        if grpc:
            r = grpc_call(addr, port, req, extra_metadata=jitter)
            return (
                str(((r.response.get("assertions") or {}).get("context") or {}).get("pod", ""))
                if r.code == "OK"
                else ""
            )
        resp = http_request(addr, port, req, extra_headers=jitter)
        body = resp.json() if resp.status == 200 else None
        return str(body.get("pod", "")) if body else ""

    why = ""
    for _attempt in range(10):
        with ThreadPoolExecutor(int(dist.get("concurrency") or 10)) as ex:
            pods = await asyncio.get_running_loop().run_in_executor(
                None, lambda: list(ex.map(one, range(total)))
            )
        if any(not p for p in pods):
            why = "a request failed"
            continue
        counts = Counter(_backend_of(p) for p in pods)
        unknown = [b for b in counts if b not in expected]
        if unknown:
            why = f"unexpected backends {unknown}"
            continue
        bad = [b for b, f in expected.items() if abs(counts.get(b, 0) / total - f) > 0.05]
        if bad or len(counts) != sum(1 for f in expected.values() if f > 0):
            why = f"distribution {dict(counts)} vs {expected}"
            continue
        return
    raise CaseFailed(f"weighted distribution: {why}")


async def _mirror_percent(
    c: Cluster, entry: dict[str, Any], case: Case, gen: Generated, scale: float
) -> None:
    lo, hi = entry["accept_range"]
    why = ""
    for _attempt in range(5):
        u = str(uuid.uuid4())
        item = {
            "target": entry["target"],
            "request": copy.deepcopy(entry["request"]),
            "expect": copy.deepcopy(entry.get("per_request_expect") or {}),
        }
        item["request"]["path"] = item["request"]["path"].replace(case.uuid, u)
        seen = item["expect"].get("request_seen_by_backend")
        if seen and seen.get("path"):
            seen["path"] = seen["path"].replace(case.uuid, u)

        def one(_: int, item: dict[str, Any] = item) -> bool:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if not _attempt_http(c, item, gen):
                    return True
                time.sleep(0.1)
            return False

        with ThreadPoolExecutor(int(entry.get("concurrency") or 10)) as ex:
            oks = await asyncio.to_thread(_map, ex, one, int(entry.get("total_requests") or 500))
        if not all(oks):
            why = "requests failed"
            continue
        await asyncio.sleep(1.0)
        line = f"Echoing back request made to {item['request']['path']} to client"
        n = _mirror_log(c, entry["mirror_backend"]).count(line)
        if lo <= n <= hi:
            return
        why = f"{n} mirrored, want within [{lo}, {hi}]"
        await asyncio.sleep(2.0)
    raise CaseFailed(f"mirror percentage {entry.get('route_rule_path')}: {why}")


async def _repeated(c: Cluster, chk: dict[str, Any]) -> None:
    addr, port = _target(c, chk["target"])
    for i in range(int(chk.get("count") or 100)):
        resp = await asyncio.to_thread(http_request, addr, port, chk["request"])
        body = resp.json() or {}
        vals = {k.lower(): v for k, v in (body.get("headers") or {}).items()}.get("backend") or []
        if resp.status != 200 or len(vals) != 1 or not str(body.get("pod", "")).startswith(vals[0]):
            raise CaseFailed(
                f"repeated request {i}: status {resp.status}, Backend {vals}, pod {body.get('pod')}"
            )


def _patch(c: Cluster, action: dict[str, Any]) -> dict[str, Any]:
    ref = action.get("object", "")
    ns, _, name = str(ref).partition("/") if isinstance(ref, str) else ("", "", "")
    if isinstance(ref, dict):
        ns, name = ref.get("namespace", ""), ref.get("name", "")
    obj = copy.deepcopy(c.get(action["kind"], ns, name) or {})
    if not obj:
        raise CaseFailed(f"action target {action['kind']} {ref} not found")
    spec = obj.setdefault("spec", {})
    if "append_to_spec_listeners" in action:
        spec.setdefault("listeners", []).append(action["append_to_spec_listeners"])
    if "resulting_spec_listeners" in action:
        spec["listeners"] = action["resulting_spec_listeners"]
    return obj


async def _action(c: Cluster, action: dict[str, Any], run: _Run) -> None:
    if action.get("action") == "delete":
        ref = action.get("object", "")
        if isinstance(ref, dict):
            ns, name = ref.get("namespace", ""), ref.get("name", "")
        else:
            ns, _, name = str(ref).partition("/")
        await c.delete([{"kind": action["kind"], "metadata": {"namespace": ns, "name": name}}])
    else:
        obj = _patch(c, action)
        meta = obj.get("metadata") or {}
        key = (str(action["kind"]), str(meta.get("namespace", "")), str(meta.get("name", "")))
        run.generation_before[key] = meta.get("generation")
        await c.apply([obj])


async def run_case(c: Cluster, case: Case, gen: Generated, controller: str, scale: float = 1.0) -> CaseResult:
    """Apply the case, check every phase, clean up. Never raises for a failing case."""
    t0 = time.monotonic()
    objs = gen.objects(case.generated)
    pairs: dict[str, tuple[bytes, bytes]] = {}
    for b in case.backends:
        secret = (b.get("pods") or {}).get("tls_secret")
        if secret:
            ns, _, name = secret.partition("/")
            pairs[secret] = gen.pair(ns, name)
            if not any(o["metadata"]["name"] == name and o["metadata"]["namespace"] == ns for o in objs):
                from .certs import tls_secret

                objs.append(tls_secret(ns, name, pairs[secret]))
    applied = objs + case.manifests
    run = _Run()
    try:
        await c.apply(applied)
        await c.ensure_backends(case.backends, pairs)
        for phase in case.phases():
            for a in case.actions:
                if int(a.get("before_phase", 1)) == phase:
                    await _action(c, a, run)
            for chk in case.status_expectations:
                if int(chk.get("phase", 1)) == phase:
                    await _poll_status(c, chk, controller, scale, run)
            for item in case.requests:
                if int(item.get("phase", 1)) == phase:
                    await _request_item(c, item, gen, scale)
            if phase == 1:
                dist = case.distribution
                if isinstance(dist, dict):
                    await _weights(c, dist)
                elif isinstance(dist, list):
                    for entry in dist:
                        await _mirror_percent(c, entry, case, gen, scale)
                if isinstance(case.repeated_check, dict):
                    await _repeated(c, case.repeated_check)
        result = CaseResult(
            case.name,
            case.feature,
            not run.unchecked,
            "",
            provisional=case.provisional,
            unchecked=run.unchecked,
        )
    except CaseFailed as e:
        result = CaseResult(
            case.name,
            case.feature,
            False,
            str(e)[:600],
            provisional=case.provisional,
            unchecked=run.unchecked,
        )
    except Exception as e:  # a harness bug must not stop the other cases
        import traceback

        traceback.print_exc()
        result = CaseResult(case.name, case.feature, False, f"harness error {type(e).__name__}: {e}"[:600])
    finally:
        keep = ("Namespace",)
        await c.delete([o for o in applied if o.get("kind") not in keep])
    result.seconds = round(time.monotonic() - t0, 1)
    return result


def sigma_range(n: int, p: float) -> tuple[float, float]:
    """``n·p ± 3·sqrt(n·p·(1-p))`` (the README's mirror-percentage rule)."""
    return n * p - 3 * math.sqrt(n * p * (1 - p)), n * p + 3 * math.sqrt(n * p * (1 - p))
