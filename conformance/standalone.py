"""A cluster stand-in for running conformance cases now: translate + one real Envoy + echo processes.

It plays the parts the full local cluster plays: an object store with the API server's bookkeeping
(uid, generation bumped on spec changes, creationTimestamp, namespace labels), LB-IPAM (each Gateway's
``cilium-gateway-<name>`` LoadBalancer Service gets a loopback address), the Deployment and
EndpointSlice controllers (echo servers run as processes named like pods, ``<deployment>-<hash>-<hash>``,
each on its own loopback address), the watcher (status patches are merged into the store) and the
xds service (the :class:`Translation` is served to Envoy through files; Gateways become
``Programmed`` once Envoy runs the version). Addresses are drawn from a random ``127.x.y.0/24``
so concurrent runs do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conformance.envoy import Envoy
from services.xds.translate import TranslateInput, Translation, translate, with_programmed
from services.xds.translate.ingest_gateway import gateway_service_name

from .envoyfs import FileXds, bootstrap

__all__ = ["Pod", "Standalone"]

Key = tuple[str, str, str]


def _key(o: dict[str, Any]) -> Key:
    m = o.get("metadata") or {}
    return (str(o.get("kind", "")), str(m.get("namespace", "")), str(m.get("name", "")))


def _hash(text: str, n: int) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    out = ""
    for _ in range(n):
        h, r = divmod(h, len(alphabet))
        out += alphabet[r]
    return out


class Pod:
    def __init__(self, namespace: str, deployment: str, index: int, ip: str, mode: str, log: Path) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.name = f"{deployment}-{_hash(namespace + deployment, 9)}-{_hash(f'{deployment}{index}', 5)}"
        self.ip = ip
        self.mode = mode
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, tls: tuple[Path, Path] | None) -> None:
        env = dict(os.environ)
        env.update(POD_NAME=self.name, NAMESPACE=self.namespace, ECHO_BIND_ADDRESS=self.ip, PORT="3000")
        env.pop("HTTP_PORT", None)
        if "grpc" in self.mode:
            env["GRPC_ECHO_SERVER"] = "1"
        elif "tcp" in self.mode:
            env["TCP_ECHO_SERVER"] = "1"
        if tls is not None:
            env.update(TLS_SERVER_CERT=str(tls[0]), TLS_SERVER_PRIVKEY=str(tls[1]), HTTPS_PORT="8443")
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echoserver.echo"], env=env, stdout=fh, stderr=subprocess.STDOUT
        )
        fh.close()

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.ip, 3000), timeout=0.5):
            return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Standalone:
    """The in-process cluster. Use as ``async with Standalone() as c:``."""

    def __init__(
        self, class_name: str = "nodemesh", controller: str = "nodemesh.io/gateway-controller"
    ) -> None:
        self.class_name = class_name
        self.controller = controller
        self.store: dict[Key, dict[str, Any]] = {}
        a, b = random.randrange(101, 250), random.randrange(0, 250, 2)
        self.pod_net, self.gw_net = f"127.{a}.{b}", f"127.{a}.{b + 1}"
        self._next_pod = 10
        self._next_gw = 10
        self._tick = 0
        self.pods: dict[str, list[Pod]] = {}  # "<ns>/<deployment>" → pods
        self._tmp = tempfile.TemporaryDirectory(prefix="nm-conf-")
        self.dir = Path(self._tmp.name)
        self.xds = FileXds(self.dir / "xds")
        self.envoy = Envoy(bootstrap(self.xds.dir), name="conformance-envoy")
        self.last: Translation | None = None
        self.last_applied = False
        self.tls_files: dict[str, tuple[Path, Path]] = {}

    async def __aenter__(self) -> Standalone:
        self.envoy.start()
        await self.envoy.wait_admin()
        await self.apply(
            [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GatewayClass",
                    "metadata": {"name": self.class_name},
                    "spec": {"controllerName": self.controller},
                }
            ]
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for pods in self.pods.values():
            for p in pods:
                p.stop()
        self.pods.clear()
        self.envoy.stop()
        self._tmp.cleanup()

    # --- the API server part ---------------------------------------------------------------------

    def _stamp(self) -> str:
        self._tick += 1
        return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime()) + f"{self._tick % 60:02d}Z"

    def _upsert(self, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        m = obj.setdefault("metadata", {})
        if obj.get("kind") == "Namespace":
            m.setdefault("labels", {})["kubernetes.io/metadata.name"] = m.get("name", "")
        old = self.store.get(_key(obj))
        if old is None:
            m.setdefault("uid", _hash(json.dumps(_key(obj)) + str(self._tick), 12))
            m["generation"] = 1
            # Increasing timestamps: creation order decides route precedence ties, as in a cluster.
            m["creationTimestamp"] = (
                f"2024-01-01T00:00:{self._tick:02d}Z" if self._tick < 60 else self._stamp()
            )
            self._tick += 1
        else:
            om = old["metadata"]
            m["uid"], m["creationTimestamp"] = om["uid"], om["creationTimestamp"]
            changed = obj.get("spec") != old.get("spec")
            m["generation"] = int(om.get("generation", 1)) + (1 if changed else 0)
            obj["status"] = old.get("status", {})
        self.store[_key(obj)] = obj
        if obj.get("kind") == "Gateway":
            self._allocate_gateway_address(obj)

    def _allocate_gateway_address(self, gw: dict[str, Any]) -> None:
        m = gw["metadata"]
        svc_key = ("Service", m.get("namespace", ""), gateway_service_name(m["name"]))
        if svc_key in self.store:
            return
        ip = f"{self.gw_net}.{self._next_gw}"
        self._next_gw += 1
        self.store[svc_key] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "namespace": svc_key[1],
                "name": svc_key[2],
                "uid": svc_key[2],
                "generation": 1,
                "labels": {"gateway.networking.k8s.io/gateway-name": m["name"]},
            },
            "spec": {
                "type": "LoadBalancer",
                "ports": [
                    {"name": f"port-{li.get('port')}", "port": li.get("port")}
                    for li in (gw.get("spec") or {}).get("listeners") or []
                ],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
        }

    async def apply(self, objs: list[dict[str, Any]]) -> None:
        for o in objs:
            self._upsert(o)
        await self.sync()

    async def delete(self, objs: list[dict[str, Any]]) -> None:
        for o in objs:
            k = _key(o)
            self.store.pop(k, None)
            if k[0] == "Gateway":
                self.store.pop(("Service", k[1], gateway_service_name(k[2])), None)
        await self.sync()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get((kind, namespace, name))

    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.store.items()) if k == kind and namespace in (None, ns)]

    def gateway_address(self, namespace: str, name: str) -> str:
        gw = self.get("Gateway", namespace, name) or {}
        for a in (gw.get("status") or {}).get("addresses") or []:
            return str(a.get("value", ""))
        return ""

    # --- the Deployment/EndpointSlice controllers -----------------------------------------------

    async def ensure_backends(
        self, backends: list[dict[str, Any]], tls_pairs: dict[str, tuple[bytes, bytes]]
    ) -> None:
        """Start the echo pods a case needs (kept across cases) and publish their EndpointSlices."""
        started: list[Pod] = []
        for b in backends:
            pods = b.get("pods") or {}
            ns, dep = pods.get("namespace", ""), pods.get("deployment", "")
            key = f"{ns}/{dep}"
            if key in self.pods:
                continue
            tls = None
            secret = pods.get("tls_secret")
            if secret and secret in tls_pairs:
                tls = self._tls_files(secret, tls_pairs[secret])
            group = []
            for i in range(int(pods.get("replicas") or 1)):
                ip = f"{self.pod_net}.{self._next_pod}"
                self._next_pod += 1
                p = Pod(
                    ns, dep, i, ip, str(pods.get("server", "echo-http")), self.dir / f"{ns}_{dep}_{i}.log"
                )
                p.start(tls)
                group.append(p)
            self.pods[key] = group
            started += group
        deadline = time.monotonic() + 60
        while started and time.monotonic() < deadline:
            started = [p for p in started if not p.ready()]
            await asyncio.sleep(0.1)
        if started:
            raise RuntimeError(f"echo pods did not start: {[p.name for p in started]}")
        self._endpoint_slices()
        await self.sync()

    def _tls_files(self, ref: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
        if ref not in self.tls_files:
            base = self.dir / ref.replace("/", "_")
            (crt, key) = (base.with_suffix(".crt"), base.with_suffix(".key"))
            crt.write_bytes(pair[0])
            key.write_bytes(pair[1])
            self.tls_files[ref] = (crt, key)
        return self.tls_files[ref]

    def _endpoint_slices(self) -> None:
        for svc in self.list_objects("Service"):
            m, spec = svc["metadata"], svc.get("spec") or {}
            sel = spec.get("selector") or {}
            app = sel.get("app")
            pods = self.pods.get(f"{m.get('namespace', '')}/{app}") if app else None
            if not pods:
                continue
            ports = [
                {"name": p.get("name", ""), "port": p.get("targetPort", p.get("port")), "protocol": "TCP"}
                for p in spec.get("ports") or []
                if isinstance(p.get("targetPort", p.get("port")), int)
            ]
            self.store[("EndpointSlice", m["namespace"], f"{m['name']}-x")] = {
                "kind": "EndpointSlice",
                "metadata": {
                    "namespace": m["namespace"],
                    "name": f"{m['name']}-x",
                    "labels": {"kubernetes.io/service-name": m["name"]},
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": [
                    {
                        "addresses": [p.ip],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": p.name},
                    }
                    for p in pods
                ],
            }

    def pod_log(self, namespace: str, deployment_prefix: str) -> str:
        """Concatenated stdout of the pods whose name starts with ``deployment_prefix``."""
        out = []
        for pods in self.pods.values():
            for p in pods:
                if p.namespace == namespace and p.name.startswith(deployment_prefix):
                    with contextlib.suppress(OSError):
                        out.append(p.log.read_text(errors="replace"))
        return "".join(out)

    def pod_count(self, namespace: str) -> int:
        return sum(1 for pods in self.pods.values() for p in pods if p.namespace == namespace)

    def pods_ready(self, namespace: str) -> bool:
        return all(p.ready() for pods in self.pods.values() for p in pods if p.namespace == namespace)

    # --- the watcher + xds part -----------------------------------------------------------------

    async def sync(self) -> None:
        objects: dict[str, list[dict[str, Any]]] = {}
        for (kind, _, _), o in self.store.items():
            objects.setdefault(kind, []).append(o)
        t = translate(TranslateInput(objects=objects, now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        self.last = t
        version = self.xds.write(t)
        applied = await self.xds.wait_applied(self.envoy, version, timeout=20)
        self.last_applied = applied
        for i, patch in enumerate(t.statuses):
            for info in t.gateways.values():
                if info.status_patch_index == i:
                    patch = with_programmed(
                        patch, info, applied, "Invalid", "" if applied else "Envoy rejected it"
                    )
            obj = self.store.get((patch.kind, patch.namespace, patch.name))
            if obj is not None:
                obj.setdefault("status", {}).update(copy.deepcopy(patch.status))
