"""The one table of every process a nodemesh cluster runs, and how each is invoked.

The local supervisor (``python -m <module>``), the compose file (``<script>`` in one image) and the
Kubernetes manifests (``<script>`` in containers) are all derived from :data:`PROCESSES` and
:func:`service_args`, so the three cannot drift: ``tests/deploy`` compares them.

A process's settings reach it as flags that every :class:`nodemesh.config.ServiceConfig` knows
(``--nats-url --node --data-dir --health-addr --log-format``) plus ``NODEMESH_*`` environment
variables for service-specific settings (an environment variable that names no config field is
ignored by :func:`nodemesh.config.load_config`, an unknown flag is an error), so a service that does
not know a setting yet still starts.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from localcluster.cells import AUTHD, DATAPATH, DNS, IDENTITY, OPERATOR, WATCHER, XDS
from localcluster.layout import DNS_ADDR
from nodemesh.netns import scope_for

__all__ = [
    "PROCESSES",
    "Context",
    "ProcSpec",
    "instance_name",
    "node_index",
    "service_args",
    "service_env",
]

Probe = Literal["readyz", "apiserver", "nats", "envoy", "prometheus"]


class ProcSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One kind of process. Per-node kinds run once per simulated node."""

    service: str
    """Service name: nats | apiserver | watcher | identity | xds | dns | datapath | authd | envoy."""
    module: str = ""
    """``python -m`` module (local supervisor); empty for a binary."""
    script: str = ""
    """Console script (pyproject ``[project.scripts]``) or binary run by compose and Kubernetes."""
    per_node: bool = False
    replicas: int = 1
    nats_user: str = ""
    """NATS user from the generated auth config; ``{node}`` is the node name."""
    probe: Probe = "readyz"
    """How readiness is checked: a service's ``/readyz`` on its health port, the API server's
    ``/readyz``, nats-server's monitoring ``/healthz``, or Envoy's admin ``/ready``."""
    privileged: bool = False
    doc: str = ""


# Start order is table order; `down` stops in reverse.
PROCESSES: tuple[ProcSpec, ...] = (
    ProcSpec(service="nats", script="nats-server", probe="nats", doc="embedded nats-server, JetStream on"),
    ProcSpec(
        service="apiserver",
        module="localcluster.apiserver",
        script="nodemesh-localapi",
        probe="apiserver",
        doc="local Kubernetes-protocol API server and controllers (the manifest store)",
    ),
    ProcSpec(
        service="watcher",
        module="services.watcher",
        script="nodemesh-watcher",
        replicas=2,
        nats_user=WATCHER.user(),
        doc="the only API client; active + standby (lease in KV)",
    ),
    ProcSpec(
        service="identity", module="services.identity", script="nodemesh-identity", nats_user=IDENTITY.user()
    ),
    ProcSpec(service="xds", module="services.xds", script="nodemesh-xds", nats_user=XDS.user()),
    ProcSpec(
        service="operator",
        module="services.operator",
        script="nodemesh-operator",
        nats_user=OPERATOR.user(),
        doc="Gateway/Ingress LoadBalancer Services and LB-IPAM, written through the watcher",
    ),
    ProcSpec(
        service="dns",
        module="services.dns",
        script="nodemesh-dns",
        nats_user=DNS.user(),
        doc="cluster DNS on the DNS address (kube-dns' endpoint); Kubernetes has CoreDNS instead",
    ),
    ProcSpec(
        service="datapath",
        module="services.datapath",
        script="nodemesh-datapath",
        per_node=True,
        nats_user=DATAPATH.user("{node}"),
        privileged=True,
    ),
    ProcSpec(
        service="authd",
        module="services.authd",
        script="nodemesh-authd",
        per_node=True,
        nats_user=AUTHD.user("{node}"),
    ),
    ProcSpec(
        service="envoy",
        module="localcluster.envoy",
        script="nodemesh-envoy",
        per_node=True,
        probe="envoy",
        doc="one Envoy per node, fed by xds ADS (the module renders the bootstrap, then execs envoy)",
    ),
)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Where the processes of one cluster find each other (local mode or compose)."""

    nats_url: str
    api_url: str
    xds_addr: str  # host:port of the ADS server (what Envoy and `--xds-addr` use)
    data_dir: str  # cluster data dir; per-node services get <data_dir>/nodes/<node>
    nodes: tuple[str, ...] = ("node-1",)
    manifests: str = ""
    log_format: str = "json"
    bind_host: str = "127.0.0.1"
    """Where servers (API server, xds ADS) listen: loopback locally, all interfaces in containers."""
    xds_pki: str = ""
    """The xDS PKI directory (nodemesh/xdspki.py): xds serves mTLS with ``<xds_pki>/server`` and node
    N's Envoy presents ``<xds_pki>/nodes/N``; "" = plaintext ADS (``--insecure-ads``)."""
    dns_addr: str = DNS_ADDR
    """Where the cluster DNS server listens (port 53) and kube-dns' EndpointSlice points
    (localcluster/dnsaddr.py); "" = no kube-dns Service."""
    node_grace: float = 40.0
    """Seconds without a heartbeat from a node's datapath before its Node turns Ready=Unknown
    (the API server's --node-monitor-grace-period); the datapath beats four times as often."""
    toleration_seconds: int = 300
    """How long pods stay on a node that is not Ready before eviction (default tolerations)."""


def instance_name(spec: ProcSpec, replica: int = 0, node: str = "") -> str:
    """``watcher-0``, ``identity``, ``datapath@node-1``."""
    if spec.per_node:
        return f"{spec.service}@{node}"
    if spec.replicas > 1:
        return f"{spec.service}-{replica}"
    return spec.service


def service_args(spec: ProcSpec, ctx: Context, node: str, health_addr: str) -> list[str]:
    """The flags a process gets after its module/script (``health_addr``: Envoy's admin port)."""
    if spec.service == "envoy":
        _host, _, admin = health_addr.rpartition(":")
        boot = f"{ctx.data_dir}/nodes/{node}/envoy/bootstrap.json"
        args = ["--node", node, "--xds-addr", ctx.xds_addr, "--admin-port", admin, "--bootstrap", boot]
        if ctx.xds_pki:
            args += ["--tls-dir", f"{ctx.xds_pki}/nodes/{node}"]
        # The node's datapath receives access logs (L7 flows) on <its data dir>/als.sock by default.
        return [*args, "--als-socket", f"{ctx.data_dir}/nodes/{node}/als.sock"]
    if spec.service == "apiserver":
        _host, _, port = ctx.api_url.rpartition(":")
        args = ["--data-dir", ctx.data_dir, "--host", ctx.bind_host, "--port", port]
        args += ["--nodes", str(len(ctx.nodes))]
        if ctx.dns_addr:
            args += ["--dns-addr", ctx.dns_addr]
        if ctx.node_grace > 0:
            args += ["--node-monitor-grace-period", f"{ctx.node_grace:g}"]
            args += ["--default-toleration-seconds", str(ctx.toleration_seconds)]
        if ctx.manifests:
            args += ["--manifests", ctx.manifests]
        return args
    data = f"{ctx.data_dir}/nodes/{node}" if spec.per_node else f"{ctx.data_dir}/{spec.service}"
    return [
        "--nats-url",
        ctx.nats_url,
        "--node",
        node,
        "--data-dir",
        data,
        "--health-addr",
        health_addr,
        "--log-format",
        ctx.log_format,
    ]


def node_index(node: str) -> int:
    """``node-3`` → 3 (the simulated node's number; its pod CIDR and address derive from it)."""
    _, _, num = node.rpartition("-")
    return int(num) if num.isdigit() else 1


def service_env(spec: ProcSpec, ctx: Context, node: str, instance: str) -> dict[str, str]:
    """Service-specific settings as ``NODEMESH_*`` variables (ignored by services without the field)."""
    i = node_index(node)
    env = {"NODEMESH_CLUSTER_DATA_DIR": ctx.data_dir}
    if spec.service == "watcher":
        env["NODEMESH_API_URL"] = ctx.api_url
        env["NODEMESH_API_TOKEN_FILE"] = f"{ctx.data_dir}/api/token"  # the API server makes it
        env["NODEMESH_WATCHER_ID"] = instance
    elif spec.service == "xds":
        env["NODEMESH_GRPC_ADDR"] = f"{ctx.bind_host}:{ctx.xds_addr.rpartition(':')[2]}"
        env["NODEMESH_NODES"] = ",".join(ctx.nodes)
        if ctx.xds_pki:
            env["NODEMESH_TLS_DIR"] = f"{ctx.xds_pki}/server"
        else:
            env["NODEMESH_INSECURE_ADS"] = "true"
    elif spec.service == "dns":
        env["NODEMESH_LISTEN"] = f"{ctx.dns_addr}:53"
    elif spec.service == "datapath":
        env["NODEMESH_POD_CIDR"] = f"10.244.{i}.0/24"
        env["NODEMESH_NODE_IP"] = f"127.0.50.{i}"
        # One naming scope for every node of the cluster: the nodes share the host's stack, and the
        # L7 redirect's connection table (nm_proxy_flows) is pinned in the scope directory so that the
        # node whose pod sends a packet finds the connection another node gave to its proxy.
        env["NODEMESH_SCOPE"] = scope_for(ctx.data_dir)
        # one machine, one host netns: node-1 translates host processes' sockets (docs/services.md)
        env["NODEMESH_LB_HOST_SOCKETS"] = "true" if i == 1 else "false"
        if ctx.node_grace > 0:
            env["NODEMESH_NODE_HEARTBEAT"] = f"{ctx.node_grace / 4:g}"
    return env
