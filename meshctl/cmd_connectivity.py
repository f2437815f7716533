"""``nodemesh connectivity test``: deploy test pods on every node, check the mesh end to end, clean up.

Like ``cilium connectivity test``. What is deployed and checked is in :mod:`meshctl.connectivity_plan`;
this module does the I/O: objects through the local API server, requests from inside pods the way
``nodemesh exec`` runs commands (the pod's network namespace and resolv.conf), mutual-auth state from
each node's authd. One line per check (``✓``/``✗`` and the reason), exit 1 on any failure. The
namespace is deleted at the end (``--keep`` leaves it for a look) and before the start (a leftover of
an interrupted run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.apiclient import ApiClient, ApiError
from localcluster.layout import ClusterInfo, data_dir, load_api_token, load_cluster, load_credentials
from nodemesh.bus import connect
from nodemesh.errors import NodemeshError
from nodemesh.kinds import by_kind
from nodemesh.netns import netns_exists, netns_name, netns_path

from . import connectivity_plan as plan
from .cmd_auth import collect
from .cmd_exec import _scope, exec_argv

__all__ = ["register"]

# Run in a pod: GET http://HOST:PORT/PATH; prints the status and the answering pod, or ERR <why>.
_GET = (
    "import http.client,json,sys\n"
    "try:\n"
    " c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=float(sys.argv[4]))\n"
    " c.request('GET',sys.argv[3]);r=c.getresponse();b=r.read()\n"
    " try: pod=json.loads(b).get('pod','')\n"
    " except ValueError: pod=''\n"
    " print(r.status,pod)\n"
    "except Exception as e: print('ERR',type(e).__name__,e)\n"
)
_RESOLVE = (
    "import socket,sys\n"
    "try: print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1],80,socket.AF_INET)}))\n"
    "except Exception as e: print('ERR',type(e).__name__,e)\n"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("connectivity", help="end-to-end checks of the mesh (like cilium connectivity test)")
    csub = p.add_subparsers(dest="connectivity_command", metavar="SUBCOMMAND")
    t = csub.add_parser("test", help="deploy test pods on every node, run the checks, clean up")
    t.add_argument("--timeout", type=float, default=30.0, help="seconds each check may take to hold")
    t.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for the test pods")
    t.add_argument("--keep", action="store_true", help="leave the test namespace in place")
    t.add_argument("--phase", action="append", choices=plan.PHASES, help="run only this phase (repeatable)")
    t.set_defaults(func=_test)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


class _Runner:
    def __init__(self, cluster: ClusterInfo, data: Path, timeout: float) -> None:
        self.cluster, self.data, self.timeout = cluster, data, timeout
        self.api = ApiClient(cluster.api_url, token=load_api_token(str(data)))
        self.pods: dict[str, dict[str, Any]] = {}
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise NodemeshError("nsenter not found (util-linux)")
        self.nsenter = nsenter

    # --- objects ---------------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        kind = by_kind(obj["kind"])
        ns = obj["metadata"].get("namespace", "")
        cur = self.api.get(kind, obj["metadata"]["name"], ns)
        if cur is None:
            self.api.create(kind, obj, ns)
        else:
            obj = {
                **obj,
                "metadata": {**obj["metadata"], "resourceVersion": cur["metadata"]["resourceVersion"]},
            }
            self.api.replace(kind, obj, ns)

    def delete_all(self) -> None:
        """Everything in the test namespace, then the namespace; waits until the pods are gone."""
        for kind_name in ("CiliumNetworkPolicy", "HTTPRoute", "Gateway", "Service", "Pod"):
            kind = by_kind(kind_name)
            for o in self.api.list(kind, plan.NAMESPACE):
                self.api.delete(kind, o["metadata"]["name"], plan.NAMESPACE)
        deadline = time.monotonic() + 60
        while self.api.list(by_kind("Pod"), plan.NAMESPACE) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.api.delete(by_kind("Namespace"), plan.NAMESPACE)

    def nodes(self) -> list[str]:
        ready = []
        for n in self.api.list(by_kind("Node")):
            conds = (n.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                ready.append(str(n["metadata"]["name"]))
        return sorted(ready)

    def wait_pods(self, names: list[str], timeout: float) -> str:
        """ "" once every pod is Running, Ready and has an IP, else what is still missing."""
        deadline = time.monotonic() + timeout
        missing: list[str] = names
        while time.monotonic() < deadline:
            pods = {p["metadata"]["name"]: p for p in self.api.list(by_kind("Pod"), plan.NAMESPACE)}
            missing = [n for n in names if not _ready(pods.get(n))]
            if not missing:
                self.pods = pods
                return ""
            time.sleep(0.5)
        return f"pods not ready after {timeout:.0f}s: {', '.join(missing)}"

    def gateway_address(self) -> str:
        gw = self.api.get(by_kind("Gateway"), plan.GATEWAY, plan.NAMESPACE) or {}
        for a in (gw.get("status") or {}).get("addresses") or []:
            if a.get("value"):
                return str(a["value"])
        return ""

    def cluster_ip(self) -> str:
        svc = self.api.get(by_kind("Service"), plan.SERVICE, plan.NAMESPACE) or {}
        return str((svc.get("spec") or {}).get("clusterIP") or "")

    # --- requests --------------------------------------------------------------------------------

    def in_pod(self, pod: str, code: str, *argv: str, timeout: float) -> str:
        p = self.pods[pod]
        node = str(p["spec"]["nodeName"])
        name = netns_name(node, plan.NAMESPACE, pod, _scope(self.cluster.data_dir, node))
        if not netns_exists(name):
            return f"ERR no network namespace for {pod} on {node}"
        resolv = self.data / "nodes" / node / "pods" / f"{plan.NAMESPACE}_{pod}.resolv.conf"
        cmd = exec_argv(
            self.nsenter,
            netns_path(name),
            resolv if resolv.is_file() else None,
            [sys.executable, "-c", code, *argv],
        )
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, check=False)
        except subprocess.TimeoutExpired:
            return "ERR timeout"
        return (out.stdout.strip() or f"ERR {out.stderr.strip()[-200:]}").splitlines()[-1]

    def target(self, dst: str) -> tuple[str, int]:
        if dst == "svc":
            return f"{plan.SERVICE}.{plan.NAMESPACE}", 80
        if dst == "gateway":
            return self.gateway_address(), 80
        return str((self.pods[dst].get("status") or {}).get("podIP") or ""), plan.PORT

    def http_once(self, chk: plan.Check, per_try: float) -> str:
        host, port = self.target(chk.dst)
        if not host:
            return f"ERR no address for {chk.dst}"
        if chk.src:
            return self.in_pod(chk.src, _GET, host, str(port), chk.path, str(per_try), timeout=per_try)
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{chk.path}", timeout=per_try) as r:
                body = r.read()
                try:
                    pod = json.loads(body).get("pod", "")
                except ValueError:
                    pod = ""
                return f"{r.status} {pod}"
        except urllib.error.HTTPError as e:
            return f"{e.code} "
        except OSError as e:
            return f"ERR {type(e).__name__} {e}"

    def run_http(self, chk: plan.Check) -> tuple[bool, str]:
        """Poll until the expected outcome holds (policies take a moment to apply); the last answer."""
        deadline = time.monotonic() + self.timeout
        per_try = 3.0 if chk.status == 0 else 5.0
        got = ""
        while True:
            got = self.http_once(chk, per_try)
            ok = got.startswith("ERR") if chk.status == 0 else got.split(" ", 1)[0] == str(chk.status)
            if ok or time.monotonic() > deadline:
                return ok, got
            time.sleep(0.5)

    def run_dns(self, chk: plan.Check) -> tuple[bool, str]:
        want = self.cluster_ip()
        fqdn = f"{plan.SERVICE}.{plan.NAMESPACE}.svc.{self.cluster.cluster_domain}"
        deadline = time.monotonic() + self.timeout
        while True:
            got = self.in_pod(chk.src, _RESOLVE, fqdn, timeout=5)
            if got == str([want]) or time.monotonic() > deadline:
                return got == str([want]), f"{fqdn} → {got} (ClusterIP {want})"
            time.sleep(0.5)

    async def run_auth(self, chk: plan.Check) -> tuple[bool, str]:
        src_node = str(self.pods[chk.src]["spec"]["nodeName"])
        dst_node = str(self.pods[chk.dst]["spec"]["nodeName"])
        user, password = load_credentials(str(self.data), "admin")
        bus = await connect(self.cluster.nats_url, name="nodemesh-connectivity", user=user, password=password)
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                replies, errors = await collect(bus, sorted({src_node, dst_node}), "authenticated", 3.0)
                entries = [e for r in replies for e in r.entries]
                pair = [
                    e
                    for e in entries
                    if {e.node, e.key.remote_node or e.node} == {src_node, dst_node}
                    and e.state == "authenticated"
                ]
                if pair or time.monotonic() > deadline:
                    why = f"{len(pair)} authenticated entries between {src_node} and {dst_node}"
                    return bool(pair), why + (f"; {'; '.join(errors)}" if errors else "")
                await asyncio.sleep(0.5)
        finally:
            await bus.nc.close()


def _ready(p: dict[str, Any] | None) -> bool:
    if not p:
        return False
    st = p.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    return st.get("phase") == "Running" and conds.get("Ready") == "True" and bool(st.get("podIP"))


def _describe(r: _Runner, chk: plan.Check, got: str) -> str:
    if chk.kind != "http":
        return got
    src = chk.src or "host"
    want = "refused/timeout" if chk.status == 0 else str(chk.status)
    return f"{src} → {chk.dst}{chk.path if chk.path != '/' else ''}: want {want}, got {got}"


async def _test(args: argparse.Namespace) -> int:
    data = data_dir(args.data_dir)
    cluster = load_cluster(str(data))
    r = _Runner(cluster, data, args.timeout)
    nodes = r.nodes()
    if not nodes:
        raise NodemeshError("no Ready node in the cluster")
    print(f"connectivity test: {len(nodes)} node(s) ({', '.join(nodes)}), namespace {plan.NAMESPACE}")
    failed = 0
    try:
        r.delete_all()  # a leftover of an interrupted run
        for obj in plan.manifests(nodes):
            r.apply(obj)
        names = [o["metadata"]["name"] for o in plan.manifests(nodes) if o["kind"] == "Pod"]
        why = r.wait_pods(names, args.ready_timeout)
        if why:
            print(f"✗ test pods: {why}")
            return 1
        print(f"✓ test pods ready on {len(nodes)} node(s)")
        phases = args.phase or list(plan.PHASES)
        for phase in plan.PHASES:
            if phase not in phases:
                continue
            pol = plan.policy(phase)
            if pol is not None:
                r.apply(pol)
            else:
                r.api.delete(by_kind("CiliumNetworkPolicy"), "connectivity", plan.NAMESPACE)
            for chk in plan.checks(len(nodes)):
                if chk.phase != phase:
                    continue
                if chk.needs_nodes > len(nodes):
                    print(f"- {chk.name}: not run ({len(nodes)} node)")
                    continue
                if chk.kind == "http":
                    ok, got = await asyncio.to_thread(r.run_http, chk)
                elif chk.kind == "dns":
                    ok, got = await asyncio.to_thread(r.run_dns, chk)
                else:
                    ok, got = await r.run_auth(chk)
                failed += not ok
                print(
                    f"{'✓' if ok else '✗'} {chk.name}" + ("" if ok else f": {_describe(r, chk, got)}"),
                    flush=True,
                )
    except ApiError as e:
        print(f"✗ API: {e}")
        failed += 1
    finally:
        if not args.keep:
            try:
                r.delete_all()
            except ApiError as e:
                print(f"warning: cleanup: {e}", file=sys.stderr)
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0
