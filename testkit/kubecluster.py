"""A cluster run the way Kubernetes runs it, minus the kubelet's containers (tests/cni).

The local API server plays kube-apiserver (Nodes ``node-<i>`` with pod CIDRs ``10.244.<i>.0/24``);
the watcher, the identity service and one datapath per node run in Kubernetes mode
(``--local-mode false``: nothing in nodemesh creates a network namespace); on each node a
:class:`~testkit.kubelet.Kubelet` creates pod sandboxes and calls the node's CNI configuration,
installed by ``nodemesh-cni install`` exactly as the DaemonSet's init container would:

- ``ptp`` / ``bridge``: the upstream plugin with ``host-local`` IPAM (Debian's
  containernetworking-plugins, /usr/lib/cni) as the cluster's CNI, ``nodemesh-cni`` chained after it;
- ``standalone``: ``nodemesh-cni`` alone (veth and address from the datapath).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cni.install import CONFLIST, install
from localcluster.apiserver.app import LocalApi
from nodemesh.config import ServiceConfig
from nodemesh.runtime import run_service
from services.datapath.app import main as datapath_main
from services.datapath.config import DatapathConfig
from services.identity.app import main as identity_main
from services.identity.config import IdentityConfig
from services.watcher.app import main as watcher_main
from services.watcher.config import WatcherConfig
from testkit.cniruntime import CniRuntime
from testkit.kubelet import Kubelet

__all__ = ["CHAINS", "UPSTREAM_CNI_BIN", "KubeCluster", "node_cidr", "upstream_conflist"]

UPSTREAM_CNI_BIN = "/usr/lib/cni"
CHAINS = ("ptp", "bridge", "standalone")


def node_cidr(i: int) -> str:
    return f"10.244.{i}.0/24"  # the local API server's Node spec.podCIDR


def upstream_conflist(chain: str, i: int, state: Path) -> dict[str, Any]:
    """The cluster's own CNI on node ``i``: ``ptp`` or ``bridge`` with ``host-local`` IPAM."""
    ipam: dict[str, Any] = {
        "type": "host-local",
        "ranges": [[{"subnet": node_cidr(i)}]],
        "dataDir": str(state),
    }
    ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    if chain == "ptp":
        plugin: dict[str, Any] = {"type": "ptp", "ipMasq": False, "mtu": 1500, "ipam": ipam}
    else:
        plugin = {"type": "bridge", "bridge": f"nmbr{i}", "isGateway": True, "ipMasq": False, "ipam": ipam}
    return {"cniVersion": "1.0.0", "name": f"k8s-{chain}", "plugins": [plugin]}


class KubeCluster:
    def __init__(
        self,
        tmp: Path,
        nats_url: str,
        pin_root: str,
        chain: str,
        nodes: int = 2,
        *,
        run_kubelets: bool = True,
        pod_wait: float = 30.0,
        cni_bundle: bool = False,
    ) -> None:
        """``run_kubelets=False``: the kubelets' CNI runtimes are set up but nothing runs pods (tests
        then drive the plugin themselves). ``cni_bundle``: install the plugin as the DaemonSet does,
        a self-contained bundle (``nodemesh-cni install --bundle-dir``), not a wrapper around this
        interpreter."""
        if chain not in CHAINS:
            raise ValueError(f"chain must be one of {CHAINS}")
        self.tmp = tmp
        self.nats_url = nats_url
        self.pin_root = pin_root
        self.chain = chain
        self.run_kubelets = run_kubelets
        self.pod_wait = pod_wait
        self.cni_bundle = tmp / "opt-nodemesh-cni" if cni_bundle else None
        self.nodes = [f"node-{i}" for i in range(1, nodes + 1)]
        self.api = LocalApi(tmp / "api", nodes=nodes, bookmark_interval=0.5)
        self.bin_dir = tmp / "opt-cni-bin"
        self.kubelets: dict[str, Kubelet] = {}
        self.datapaths: dict[str, DatapathConfig] = {}
        self._tasks: dict[str, tuple[asyncio.Task[int], asyncio.Event]] = {}

    def node_dir(self, node: str) -> Path:
        return self.tmp / "nodes" / node

    def cni_socket(self, node: str) -> str:
        return str(self.node_dir(node) / "run" / "cni.sock")

    def conf_dir(self, node: str) -> Path:
        return self.node_dir(node) / "etc-cni-net.d"

    def _run(self, name: str, cfg: ServiceConfig, main: Any) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_service(name, cfg, main, install_signals=False, stop=stop))
        self._tasks[name + ("@" + cfg.node if name == "datapath" else "")] = (task, stop)

    async def start_datapath(self, node: str) -> None:
        """Start the node's datapath and wait for its endpoint socket (ADDs then wait for its sync)."""
        sock = self.cni_socket(node)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        self._run("datapath", self.datapaths[node], datapath_main)
        task, _stop = self._tasks[f"datapath@{node}"]
        while not await asyncio.to_thread(os.path.exists, sock):
            if task.done():
                raise AssertionError(f"datapath@{node} exited with {task.result()}")
            await asyncio.sleep(0.05)

    async def stop_datapath(self, node: str) -> None:
        task, stop = self._tasks.pop(f"datapath@{node}")
        stop.set()
        await asyncio.wait_for(task, 60)

    def install_cni(self, node: str, i: int) -> CniRuntime:
        """What the init container does: the plugin binary and the conflist (chained into the
        cluster's own network when there is one)."""
        conf_dir = self.conf_dir(node)
        conf_dir.mkdir(parents=True, exist_ok=True)
        if self.chain != "standalone":
            net = upstream_conflist(self.chain, i, self.node_dir(node) / "host-local")
            (conf_dir / "10-cluster.conflist").write_text(json.dumps(net))
        mode = "standalone" if self.chain == "standalone" else "chained"
        out = install(
            self.bin_dir, conf_dir, mode, self.cni_socket(node), sys.executable, bundle_dir=self.cni_bundle
        )
        assert out.name == CONFLIST
        conflist = json.loads(out.read_text())
        return CniRuntime(
            conflist, [str(self.bin_dir), UPSTREAM_CNI_BIN], self.node_dir(node) / "cni-results"
        )

    async def start(self) -> None:
        await self.api.start()
        common: dict[str, Any] = {"nats_url": self.nats_url, "log_format": "text"}
        self._run(
            "watcher",
            WatcherConfig(**common, data_dir=str(self.tmp / "watcher"), api_url=self.api.url),
            watcher_main,
        )  # fmt: skip
        self._run(
            "identity",
            IdentityConfig(**common, data_dir=str(self.tmp / "identity"), gc_grace=3600.0),
            identity_main,
        )  # fmt: skip
        for i, node in enumerate(self.nodes, start=1):
            self.datapaths[node] = DatapathConfig(
                **common, node=node, data_dir=str(self.node_dir(node)), pin_root=self.pin_root,
                local_mode=False, cni_socket=self.cni_socket(node), lb=False, accesslog="off",
                cni_pod_wait=self.pod_wait,
            )  # fmt: skip
            await self.start_datapath(node)
            runtime = self.install_cni(node, i)
            self.kubelets[node] = Kubelet(node, f"127.0.50.{i}", self.api.url, runtime)
        if self.run_kubelets:
            for k in self.kubelets.values():
                await k.start()

    async def stop(self) -> None:
        for k in self.kubelets.values():
            with contextlib.suppress(Exception):
                await k.stop()
        for task, stop in reversed(list(self._tasks.values())):
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
        self._tasks.clear()
        await self.api.stop()
        if self.chain == "bridge":
            await asyncio.to_thread(_delete_bridges, len(self.nodes))

    # --- the API, as kubectl would use it -------------------------------------------------------
    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        import aiohttp

        from nodemesh import kinds

        k = kinds.by_kind(obj["kind"])
        ns = obj.get("metadata", {}).get("namespace", "default") if k.namespaced else ""
        group = "api/v1" if k.api_version == "v1" else f"apis/{k.api_version}"
        url = f"{self.api.url}/{group}/" + (f"namespaces/{ns}/" if ns else "") + k.plural
        async with aiohttp.ClientSession() as s, s.post(url, json={**obj, "apiVersion": k.api_version}) as r:
            body: dict[str, Any] = await r.json()
            if r.status >= 300:
                raise AssertionError(f"create {obj['kind']}: {r.status} {body}")
            return body

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        import aiohttp

        from nodemesh import kinds

        k = kinds.by_kind(kind)
        group = "api/v1" if k.api_version == "v1" else f"apis/{k.api_version}"
        url = f"{self.api.url}/{group}/namespaces/{namespace}/{k.plural}/{name}"
        async with aiohttp.ClientSession() as s, s.delete(url) as r:
            if r.status >= 300 and r.status != 404:
                raise AssertionError(f"delete {kind} {namespace}/{name}: {r.status} {await r.text()}")


def _delete_bridges(nodes: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for i in range(1, nodes + 1):
            for idx in ipr.link_lookup(ifname=f"nmbr{i}"):
                ipr.link("del", index=idx)
