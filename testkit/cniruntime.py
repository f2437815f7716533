"""Invoke a CNI network configuration list the way containerd does (through libcni).

For each plugin of the list, in order for ADD and CHECK and in reverse for DEL: find the executable
named by ``type`` in ``CNI_PATH``, run it with ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
``CNI_IFNAME``, ``CNI_ARGS`` (``IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;
K8S_POD_INFRA_CONTAINER_ID=…;K8S_POD_UID=…``, as the CRI plugin sets them) and ``CNI_PATH``, with the
plugin's configuration on stdin, completed by the list's ``name`` and ``cniVersion`` and the previous
plugin's result as ``prevResult``. The last ADD result is cached (libcni keeps it under
/var/lib/cni/results) and given to CHECK and DEL as ``prevResult``. A non-zero exit is an error
document on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CniPluginError", "CniRuntime", "PodRef"]


class CniPluginError(Exception):
    def __init__(self, plugin: str, command: str, doc: dict[str, Any], stderr: str = "") -> None:
        self.plugin, self.command = plugin, command
        self.code = int(doc.get("code", 0) or 0)
        self.msg = str(doc.get("msg", ""))
        self.details = str(doc.get("details", ""))
        self.doc = doc
        super().__init__(f"{plugin} {command}: [{self.code}] {self.msg} {self.details} {stderr}".strip())


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    container_id: str
    netns: str
    ifname: str = "eth0"

    def cni_args(self) -> str:
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}"
        )


class CniRuntime:
    def __init__(self, conflist: dict[str, Any], bin_dirs: list[str], cache_dir: Path) -> None:
        self.conflist = conflist
        self.bin_dirs = bin_dirs
        self.cache_dir = cache_dir

    @property
    def plugins(self) -> list[dict[str, Any]]:
        return list(self.conflist["plugins"])

    def _binary(self, type_: str) -> str:
        for d in self.bin_dirs:
            p = os.path.join(d, type_)
            if os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"CNI plugin {type_} not found in {self.bin_dirs}")

    def exec(
        self,
        plugin: dict[str, Any],
        command: str,
        pod: PodRef | None,
        prev: dict[str, Any] | None = None,
        stdin: bytes | None = None,
    ) -> dict[str, Any] | None:
        """One plugin run; returns the document it printed (None if nothing)."""
        conf = {**plugin, "cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"]}
        if prev is not None:
            conf["prevResult"] = prev
        env = {
            "CNI_COMMAND": command,
            "CNI_PATH": ":".join(self.bin_dirs),
            "PATH": os.environ.get("PATH", ""),
        }
        if pod is not None:
            env |= {
                "CNI_CONTAINERID": pod.container_id,
                "CNI_NETNS": pod.netns,
                "CNI_IFNAME": pod.ifname,
                "CNI_ARGS": pod.cni_args(),
            }
        p = subprocess.run(
            [self._binary(str(plugin["type"]))],
            input=json.dumps(conf).encode() if stdin is None else stdin,
            env=env,
            capture_output=True,
            timeout=120,
        )
        out = p.stdout.decode().strip()
        doc = json.loads(out) if out else None
        if p.returncode != 0:
            raise CniPluginError(str(plugin["type"]), command, doc or {}, p.stderr.decode()[-2000:])
        return doc

    def _cache(self, pod: PodRef) -> Path:
        return self.cache_dir / f"{self.conflist['name']}-{pod.container_id}-{pod.ifname}"

    def add(self, pod: PodRef) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.plugins:
            prev = self.exec(plugin, "ADD", pod, prev)
        assert prev is not None, "the last plugin of an ADD must print a result"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache(pod).write_text(json.dumps(prev))
        return prev

    def cached(self, pod: PodRef) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self._cache(pod).read_text())
            return doc
        except FileNotFoundError:
            return None

    def check(self, pod: PodRef) -> None:
        prev = self.cached(pod)
        for plugin in self.plugins:
            self.exec(plugin, "CHECK", pod, prev)

    def delete(self, pod: PodRef) -> None:
        prev = self.cached(pod)
        for plugin in reversed(self.plugins):
            self.exec(plugin, "DEL", pod, prev)
        self._cache(pod).unlink(missing_ok=True)


def pod_ipv4(result: dict[str, Any]) -> str:
    """The pod's address from a CNI result (what the CRI plugin reports as the sandbox IP)."""
    for entry in result.get("ips") or []:
        addr = str(entry.get("address", ""))
        if "." in addr:
            return addr.split("/")[0]
    raise ValueError(f"no IPv4 address in CNI result {result}")
