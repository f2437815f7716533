"""Generate ``deploy/compose/compose.yaml`` from the process table: ``python -m localcluster.compose``.

Every service runs the same entrypoint the local supervisor runs (``python -m <module>`` plus
:func:`localcluster.processes.service_args`), in one image (``deploy/Dockerfile``), with
container names instead of loopback ports. ``tests/deploy`` regenerates the file and compares, so
it cannot drift from the table.

NATS has one user per service and per node, as in local mode (``localcluster.deploygen``): its
configuration is ``deploy/compose/nats.conf`` (generated, no secrets) and every password comes from
``deploy/compose/.env`` (``python -m localcluster.deploygen compose-env > deploy/compose/.env``,
never committed), which compose reads for ``${NATS_PASSWORD_…}``.

The node agents (datapath, authd, Envoy) and the DNS server run on the host network: the datapath
plumbs pods into the host's namespaces, authd listens on the node addresses it puts there, Envoy
reaches pods through the host's routes and takes the datapath's TPROXY redirects, and the DNS server
answers on the host's DNS address. They cannot resolve compose's service names, so NATS and the xds
ADS port are published on the host's 127.0.0.1 and those processes dial that; each binds its own
health port (they share one network namespace).
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import yaml

from localcluster.deploygen import password_var
from localcluster.processes import (
    PROCESSES,
    Context,
    ProcSpec,
    instance_name,
    node_index,
    service_args,
    service_env,
)
from nodemesh.natsauth import ADMIN

__all__ = ["COMPOSE_CONTEXT", "HEALTH_PORT", "HOST_CONTEXT", "health_addr", "host_network", "render"]

IMAGE = "nodemesh:dev"
HEALTH_PORT = 8080
COMPOSE_CONTEXT = Context(
    nats_url="nats://nats:4222",
    api_url="http://apiserver:6443",
    xds_addr="xds:18000",
    data_dir="/var/lib/nodemesh",
    nodes=("node-1", "node-2"),
    manifests="/manifests",
    log_format="json",
    bind_host="0.0.0.0",
    xds_pki="/var/lib/nodemesh/pki",
)
PKI_HOST_DIR = "./pki"
"""Where ``python -m localcluster.deploygen xds-pki --dir deploy/compose/pki`` put the certificates."""


HOST_CONTEXT = msgspec.structs.replace(
    COMPOSE_CONTEXT, nats_url="nats://127.0.0.1:4222", xds_addr="127.0.0.1:18000"
)
"""What host-network processes dial: the ports NATS and xds publish on the host's loopback."""
HOST_NETWORK = ("dns", "datapath", "authd", "envoy")
# Health (Envoy: admin) ports of host-network processes, which share the host's namespace.
_HOST_PORTS = {"dns": 9870, "datapath": 9880, "authd": 9890, "envoy": 9900}
NATS_CONF = "/etc/nats/nats.conf"


def host_network(spec: ProcSpec) -> bool:
    return spec.service in HOST_NETWORK


def health_addr(spec: ProcSpec, node: str) -> str:
    """Where a process serves /healthz (Envoy: its admin API)."""
    if host_network(spec):
        port = _HOST_PORTS[spec.service] + (node_index(node) if spec.per_node else 0)
        return f"127.0.0.1:{port}"
    return "0.0.0.0:9901" if spec.service == "envoy" else f"0.0.0.0:{HEALTH_PORT}"


def context(spec: ProcSpec) -> Context:
    return HOST_CONTEXT if host_network(spec) else COMPOSE_CONTEXT


def _command(spec: ProcSpec, node: str) -> list[str]:
    if spec.service == "nats":
        return ["nats-server", "-c", NATS_CONF]
    return ["python", "-m", spec.module, *service_args(spec, context(spec), node, health_addr(spec, node))]


def _required(var: str) -> str:
    # Compose refuses to start (and `config` fails) when the variable is unset: no silent empty password.
    return "${" + var + ":?run python -m localcluster.deploygen compose-env > deploy/compose/.env}"


def render() -> dict[str, Any]:
    from localcluster.deploygen import compose_users

    services: dict[str, Any] = {}
    ctx = COMPOSE_CONTEXT
    users = list(compose_users(ctx.nodes))
    for spec in PROCESSES:
        placements = (
            [(0, n) for n in ctx.nodes]
            if spec.per_node
            else [(r, ctx.nodes[0]) for r in range(spec.replicas)]
        )
        for replica, node in placements:
            name = instance_name(spec, replica, node).replace("@", "-")
            svc: dict[str, Any] = {"image": IMAGE, "command": _command(spec, node)}
            env = {
                k: v
                for k, v in service_env(spec, context(spec), node, name).items()
                if k != "NODEMESH_CLUSTER_DATA_DIR"
            }
            if spec.nats_user:
                user = spec.nats_user.format(node=node)
                env["NODEMESH_NATS_USER"] = user
                env["NODEMESH_NATS_PASSWORD"] = _required(password_var(user))
            if spec.service == "nats":
                # nats-server resolves each user's $NATS_PASSWORD_<USER> from its environment.
                env = {password_var(u): _required(password_var(u)) for u in users}
            if env:
                svc["environment"] = dict(sorted(env.items()))
            if spec.service != "nats":
                svc["depends_on"] = ["nats"] + (["apiserver"] if spec.service == "watcher" else [])
            if spec.service == "apiserver":
                svc["volumes"] = ["../../examples/demo:/manifests:ro", "api:/var/lib/nodemesh/api"]
            if spec.service == "watcher":
                # The API server's bearer token (api/token), which it creates on first start.
                svc["volumes"] = ["api:/var/lib/nodemesh/api:ro"]
            if spec.service == "nats":
                svc["volumes"] = ["./nats.conf:/etc/nats/nats.conf:ro", "nats:/var/lib/nodemesh/nats"]
                # For the host-network processes, on the host's loopback only.
                svc["ports"] = ["127.0.0.1:4222:4222"]
            if spec.service == "xds":
                # ADS over mTLS: xds's serving certificate only (the CA key stays on the host).
                svc["volumes"] = [f"{PKI_HOST_DIR}/server:{ctx.xds_pki}/server:ro"]
                svc["hostname"] = "xds"
                svc["ports"] = ["127.0.0.1:18000:18000"]
            if host_network(spec):
                svc["network_mode"] = "host"
            if spec.privileged:
                # The datapath loads BPF programs and creates pod namespaces on the host.
                svc.update(privileged=True, pid="host")
                svc["volumes"] = [
                    "/sys/fs/bpf:/sys/fs/bpf",
                    "/run/netns:/run/netns:shared",
                    "/lib/modules:/lib/modules:ro",
                ]
            if spec.service == "authd":
                # Workload API attestation: the caller's pid (SO_PEERCRED, so the host's pid namespace)
                # → /proc/<pid>/ns/net (SYS_PTRACE: workloads are the privileged datapath's children,
                # with more capabilities than authd) → the pod namespace the datapath pinned under
                # /run/netns (rslave: namespaces made after authd started must appear here too).
                svc["pid"] = "host"
                svc["cap_add"] = ["SYS_PTRACE"]
                svc["volumes"] = ["/run/netns:/run/netns:ro,rslave"]
            if spec.service == "envoy":
                # Transparent (IP_TRANSPARENT) listeners for the datapath's L7 policy redirects.
                svc["cap_add"] = ["NET_ADMIN"]
                # This node's ADS client certificate only.
                pki = f"{ctx.xds_pki}/nodes/{node}"
                svc["volumes"] = [f"{PKI_HOST_DIR}/nodes/{node}:{pki}:ro"]
            if spec.service in ("datapath", "envoy", "authd"):
                # The node's directory, shared: Envoy writes access logs to its datapath's socket
                # (<node dir>/als.sock), and the workloads the datapath starts reach authd's Workload
                # API at <node dir>/workload.sock.
                svc.setdefault("volumes", []).append(f"{node}:{ctx.data_dir}/nodes/{node}")
            # dns: pods live in the host's network namespaces (the datapath's), so the DNS server
            # listens on the host's DNS address (which must be on the host's lo, see docs/dns.md).
            svc["restart"] = "unless-stopped"
            services[name] = svc
    # The admin step (nodemesh/streams.py): streams and buckets, created once as `admin`; the
    # services wait for them (their NATS users may not create streams).
    services["provision"] = {
        "image": IMAGE,
        "command": ["nodemesh", "nats", "provision", "--nats-url", ctx.nats_url],
        "environment": {
            "NODEMESH_NATS_PASSWORD": _required(password_var(ADMIN)),
            "NODEMESH_NATS_USER": ADMIN,
        },
        "depends_on": ["nats"],
        "restart": "on-failure",
    }
    # No top-level `name:`: Compose v1 rejects it (the project is named after the directory, or -p).
    return {
        "services": services,
        "volumes": {"nats": {}, "api": {}, **{n: {} for n in ctx.nodes}},
    }


HEADER = """\
# GENERATED by `python -m localcluster.compose > deploy/compose/compose.yaml` from the process
# table in localcluster/processes.py — do not edit; tests/deploy checks it is current.
# Build the image first: docker build -f deploy/Dockerfile -t nodemesh:dev .
# NATS passwords: python -m localcluster.deploygen compose-env > deploy/compose/.env  (never commit it)
# ADS certificates: python -m localcluster.deploygen xds-pki --dir deploy/compose/pki   (never commit it)
"""


def main() -> int:
    sys.stdout.write(HEADER + yaml.safe_dump(render(), sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
