"""Conformance against a local cluster started with ``nodemesh up`` (``--mode cluster``).

Objects go through the local Kubernetes-protocol API server; the watcher, xds, datapath and the
per-node Envoys do the rest. Backends become Deployments running the upstream echo-basic image
(local mode maps it to :mod:`echoserver.echo`), with ``POD_NAME``/``NAMESPACE`` from the downward API,
so pods are named ``<deployment>-<hash>-<hash>`` by the Deployment/ReplicaSet controllers. Local
mode has no volumes: a backend's serving certificate is written to a file on the host and named in
``TLS_SERVER_CERT``/``TLS_SERVER_PRIVKEY`` (pods are host processes in a network namespace). Mirror
checks read the pods' logs under ``<data-dir>/nodes/<node>/pods/``.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

from localcluster.apiclient import ApiClient, ApiError
from localcluster.layout import load_api_token, load_cluster
from nodemesh.kinds import by_kind

__all__ = ["LocalCluster"]

# the image of the upstream base manifests
ECHO_IMAGE = "gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd"

BASE_NAMESPACES = {
    "gateway-conformance-infra": "infra",
    "gateway-conformance-app-backend": "backend",
    "gateway-conformance-web-backend": "backend",
}


def _ns_name(o: dict[str, Any]) -> tuple[str, str]:
    m = o.get("metadata") or {}
    return str(m.get("namespace", "")), str(m.get("name", ""))


class LocalCluster:
    """A running local cluster seen through its API server."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.info = load_cluster(data_dir)
        self.api = ApiClient(self.info.api_url, token=load_api_token(self.info.data_dir))
        self.pod_logs = Path(self.info.data_dir)
        self._tmp = tempfile.TemporaryDirectory(prefix="nm-conf-certs-")
        self._deployments: set[str] = set()
        self._namespaces: set[str] = set()

    async def __aenter__(self) -> LocalCluster:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.delete(
            [
                {"kind": "Deployment", "metadata": {"namespace": k.split("/")[0], "name": k.split("/")[1]}}
                for k in self._deployments
            ]
        )
        self._tmp.cleanup()

    def _upsert(self, obj: dict[str, Any]) -> None:
        kind = by_kind(str(obj["kind"]))
        ns, name = _ns_name(obj)
        obj = copy.deepcopy(obj)
        # The local API server serves one version per kind (ReferenceGrant v1beta1, TLSRoute
        # v1alpha2); the corpus may use a newer one of the same schema, as a conversion would.
        obj["apiVersion"] = kind.api_version
        old = self.api.get(kind, name, ns)
        if old is None:
            self.api.create(kind, obj, ns)
            return
        obj["metadata"]["resourceVersion"] = (old.get("metadata") or {}).get("resourceVersion", "")
        self.api.replace(kind, obj, ns)

    def _ensure_namespace(self, ns: str) -> None:
        """The base manifests' namespaces (labels as the corpus README says), before anything in them."""
        if not ns or ns in self._namespaces:
            return
        if self.api.get(by_kind("Namespace"), ns, "") is None:
            labels = {"gateway-conformance": BASE_NAMESPACES[ns]} if ns in BASE_NAMESPACES else {}
            meta = {"name": ns, "labels": labels}
            self.api.create(
                by_kind("Namespace"), {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}, ""
            )
        self._namespaces.add(ns)

    async def apply(self, objs: list[dict[str, Any]]) -> None:
        for o in sorted(objs, key=lambda o: o.get("kind") != "Namespace"):
            await asyncio.to_thread(self._ensure_namespace, _ns_name(o)[0])
            await asyncio.to_thread(self._upsert, o)

    async def delete(self, objs: list[dict[str, Any]]) -> None:
        for o in objs:
            ns, name = _ns_name(o)
            try:
                await asyncio.to_thread(self.api.delete, by_kind(str(o["kind"])), name, ns)
            except (ApiError, KeyError):
                pass

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(by_kind(kind), name, namespace)
        except ApiError:
            return None

    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        try:
            return self.api.list(by_kind(kind), namespace or "")
        except ApiError:
            return []

    def gateway_address(self, namespace: str, name: str) -> str:
        gw = self.get("Gateway", namespace, name) or {}
        for a in (gw.get("status") or {}).get("addresses") or []:
            return str(a.get("value", ""))
        return ""

    def _deployment(self, pods: dict[str, Any], tls: tuple[Path, Path] | None) -> dict[str, Any]:
        ns, dep = str(pods.get("namespace", "")), str(pods.get("deployment", ""))
        env: list[dict[str, Any]] = [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
        server = str(pods.get("server", "echo-http"))
        if "grpc" in server:
            env.append({"name": "GRPC_ECHO_SERVER", "value": "1"})
        elif "tcp" in server:
            env.append({"name": "TCP_ECHO_SERVER", "value": "1"})
        if tls is not None:
            env += [
                {"name": "TLS_SERVER_CERT", "value": str(tls[0])},
                {"name": "TLS_SERVER_PRIVKEY", "value": str(tls[1])},
            ]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"namespace": ns, "name": dep, "labels": {"app": dep}},
            "spec": {
                "replicas": int(pods.get("replicas") or 1),
                "selector": {"matchLabels": {"app": dep}},
                "template": {
                    "metadata": {"labels": {"app": dep}},
                    "spec": {
                        "containers": [
                            {
                                "name": dep,
                                "image": ECHO_IMAGE,
                                "env": env,
                                "readinessProbe": {"tcpSocket": {"port": 3000}, "periodSeconds": 1},
                            }
                        ]
                    },
                },
            },
        }

    async def ensure_backends(
        self, backends: list[dict[str, Any]], tls_pairs: dict[str, tuple[bytes, bytes]]
    ) -> None:
        deps = []
        for b in backends:
            pods = b.get("pods") or {}
            key = f"{pods.get('namespace', '')}/{pods.get('deployment', '')}"
            if key in self._deployments:
                continue
            tls = None
            secret = pods.get("tls_secret")
            if secret and secret in tls_pairs:
                base = Path(self._tmp.name) / str(secret).replace("/", "_")
                crt, key_file = base.with_suffix(".crt"), base.with_suffix(".key")
                crt.write_bytes(tls_pairs[secret][0])
                key_file.write_bytes(tls_pairs[secret][1])
                crt.chmod(0o644)
                key_file.chmod(0o644)
                tls = (crt, key_file)
            deps.append(self._deployment(pods, tls))
            self._deployments.add(key)
        await self.apply(deps)
        # Wait until every Deployment has its replicas, all Ready (an empty namespace is not "ready" here:
        # the Deployment controller may not have created the pods yet).
        pending = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]["replicas"] for d in deps}
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            pending = {k: n for k, n in pending.items() if self._ready_count(*k) < n}
            await asyncio.sleep(0.5)
        if pending:
            raise RuntimeError(f"backend pods not ready after 300 s: {sorted(pending)}")

    def _ready_count(self, namespace: str, deployment: str) -> int:
        n = 0
        for p in self._pods(namespace):
            labels = (p.get("metadata") or {}).get("labels") or {}
            conds = (p.get("status") or {}).get("conditions") or []
            if labels.get("app") == deployment and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conds
            ):
                n += 1
        return n

    def _pods(self, namespace: str) -> list[dict[str, Any]]:
        return self.list_objects("Pod", namespace)

    def pod_count(self, namespace: str) -> int:
        return len(self._pods(namespace))

    def pods_ready(self, namespace: str) -> bool:
        for p in self._pods(namespace):
            conds = (p.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                return False
        return True

    def pod_log(self, namespace: str, deployment_prefix: str) -> str:
        out = []
        for p in self._pods(namespace):
            name = str((p.get("metadata") or {}).get("name", ""))
            if name.startswith(deployment_prefix):
                # each node's datapath writes its pods' logs under <data-dir>/nodes/<node>/pods/
                for path in sorted(self.pod_logs.glob(f"nodes/*/pods/{namespace}_{name}.log")):
                    try:
                        out.append(path.read_text(errors="replace"))
                    except OSError:
                        pass
        return "".join(out)
