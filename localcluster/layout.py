"""Where local mode keeps things under the data directory, and the cluster state file.

    <data-dir>/             0700: only its owner enters (docs/security.md)
      run/cluster.json      ClusterInfo: URLs, ports, nodes (written by `nodemesh up`, 0644)
      run/credentials.json  NATS users and passwords (0600)
      run/supervisor.pid    the supervisor's pid
      run/state.json        SupervisorState: each process, pid, restarts, health port
      logs/<proc>.log       each process's stdout+stderr
      nats/                 nats-server config (0600: every password) and JetStream store
      api/                  local API server store (0600) and its bearer token ``token`` (0600)
      pki/                  xDS CA, xds's and each node's ADS client certificate (keys 0600)
      identity/ca/          CA key (0600) and certificate
      nodes/<node>/         per-node state: datapath IPAM, authd keys (0600), envoy bootstrap (0600)

Every CLI command finds the cluster through :func:`load_cluster` (``--data-dir``, else
``$NODEMESH_DATA_DIR``, else ``/var/lib/nodemesh``).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import msgspec

from nodemesh.errors import NodemeshError

__all__ = [
    "DNS_ADDR",
    "ClusterInfo",
    "NodeSpec",
    "ProcState",
    "SupervisorState",
    "api_token_path",
    "data_dir",
    "ensure_api_token",
    "load_api_token",
    "load_cluster",
    "load_credentials",
    "load_state",
]

DEFAULT_DATA_DIR = "/var/lib/nodemesh"
#: Where the cluster DNS server listens (on ``lo``; NodeLocal DNSCache's address, see dnsaddr.py).
DNS_ADDR = "169.254.20.10"


class NodeSpec(msgspec.Struct, kw_only=True):
    name: str  # node-1, node-2, …
    index: int  # 1-based
    address: str  # node IP; authd listens here
    pod_cidr: str  # 10.244.<index>.0/24
    envoy_admin_port: int = 0


class ClusterInfo(msgspec.Struct, kw_only=True):
    data_dir: str
    nats_url: str
    api_url: str  # local Kubernetes-protocol API server
    xds_addr: str  # host:port of the ADS gRPC server
    nodes: list[NodeSpec]
    lb_pool: str = "127.0.100.0/24"
    trust_domain: str = "cluster.local"
    dns_addr: str = ""  # the DNS server's address on lo ("" = none); pods reach it as kube-dns
    cluster_dns: str = "10.96.0.10"  # kube-dns' ClusterIP: the nameserver in every pod's resolv.conf
    cluster_domain: str = "cluster.local"
    version: str = ""
    prometheus_url: str = ""  # up --monitoring
    ui_url: str = ""  # up --monitoring: the service map page


class ProcState(msgspec.Struct, kw_only=True):
    name: str  # e.g. "watcher-0", "datapath@node-1", "envoy@node-2"
    service: str  # watcher | identity | authd | xds | datapath | apiserver | envoy | nats
    node: str = ""
    pid: int = 0
    running: bool = False
    ready: bool = False
    restarts: int = 0
    health_port: int = 0
    started: float = 0.0
    last_exit: int | None = None
    version: str = ""
    log: str = ""  # its log file
    argv: list[str] = []


class SupervisorState(msgspec.Struct, kw_only=True):
    pid: int
    procs: list[ProcState]
    updated: float = 0.0
    phase: str = "starting"  # starting | running | stopping

    @property
    def pending(self) -> list[ProcState]:
        """Processes that should be ready but are not."""
        return [p for p in self.procs if not p.ready]


def data_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("NODEMESH_DATA_DIR") or DEFAULT_DATA_DIR).absolute()


def api_token_path(directory: str | Path) -> Path:
    """The local API server's bearer token file under a cluster data directory."""
    return Path(directory) / "api" / "token"


def ensure_api_token(directory: str | Path) -> str:
    """The API token of the cluster in ``directory``, created (0600, in a 0700 dir) if missing."""
    path = api_token_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def load_api_token(explicit: str | None = None) -> str:
    """The CLI's token for the local API server ("" if the cluster has none)."""
    try:
        return api_token_path(data_dir(explicit)).read_text().strip()
    except OSError:
        return ""


def load_cluster(explicit: str | None = None) -> ClusterInfo:
    path = data_dir(explicit) / "run" / "cluster.json"
    try:
        return msgspec.json.decode(path.read_bytes(), type=ClusterInfo)
    except FileNotFoundError as e:
        raise NodemeshError(f"no local cluster at {path.parent.parent} (run `nodemesh up` first)") from e
    except msgspec.DecodeError as e:
        raise NodemeshError(f"corrupt {path}: {e}") from e


def load_credentials(explicit: str | None = None, user: str = "admin") -> tuple[str, str]:
    """(user, password) for a NATS user of the local cluster; ``admin`` is the CLI's."""
    path = data_dir(explicit) / "run" / "credentials.json"
    try:
        creds = json.loads(path.read_text())
    except FileNotFoundError:
        return ("", "")
    entry = creds.get(user) or {}
    return (entry.get("user", ""), entry.get("password", ""))


def load_state(explicit: str | None = None) -> SupervisorState | None:
    path = data_dir(explicit) / "run" / "state.json"
    try:
        return msgspec.json.decode(path.read_bytes(), type=SupervisorState)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
