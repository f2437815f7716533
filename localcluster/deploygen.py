"""NATS users for the deployments: ``python -m localcluster.deploygen <what>``.

The users and permissions are :func:`nodemesh.natsauth.user_permissions` of the deployed cells, as
in local mode; what differs is where the passwords live, since they are never committed:

* ``k8s-secrets --nodes a,b,c [--keep FILE]``: the Kubernetes Secrets, with fresh random passwords
  (``--keep``: reuse those in ``kubectl get secret -o json`` output, so re-running it after adding
  a node does not lock out running processes). ``nodemesh-nats-server`` holds nats-server's
  ``auth.conf``; ``nodemesh-nats-control`` one ``<user>.json`` per control-plane user (each
  Deployment mounts only its own); ``nodemesh-nats-datapath`` / ``-authd`` one
  ``<service>-<node>.json`` per node (a DaemonSet cannot pick a per-node key, so every node's agent
  sees the files of the other nodes' agents of the same service). A JSON file is the service's
  ``--config`` (``{"nats_user", "nats_password"}``).
* ``compose-nats-conf``: nats-server's configuration for ``deploy/compose`` (committed): the
  passwords are ``$NATS_PASSWORD_<USER>`` references that nats-server resolves from its
  environment, which compose fills from ``deploy/compose/.env``.
* ``compose-env``: that ``.env`` with fresh random passwords (not committed).
* ``xds-pki --dir deploy/compose/pki``: the xDS CA, xds's serving certificate and one ADS client
  certificate per compose node (nodemesh/xdspki.py; not committed). Compose mounts ``server/`` into
  xds and ``nodes/<node>/`` into that node's Envoy only; the CA key stays on the host.

Kubernetes does not run the cluster DNS service (CoreDNS serves kube-dns), so it has no user there.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from localcluster.cells import CELLS, DNS
from nodemesh.cell import Cell
from nodemesh.natsauth import Permissions, render_authorization, user_permissions
from nodemesh.xdspki import ensure_pki

__all__ = [
    "K8S_CELLS",
    "NAMESPACE",
    "compose_env",
    "compose_nats_conf",
    "k8s_secrets",
    "password_var",
    "secret_name",
]

NAMESPACE = "nodemesh-system"
K8S_CELLS: tuple[Cell, ...] = tuple(c for c in CELLS if c is not DNS)
"""The services deployed on Kubernetes (no cluster DNS: CoreDNS does its job there)."""
SERVER_SECRET = "nodemesh-nats-server"


def password_var(user: str) -> str:
    """``datapath-node-1`` → ``NATS_PASSWORD_DATAPATH_NODE_1`` (an environment variable name)."""
    return "NATS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def secret_name(user: str, cells: Iterable[Cell] = K8S_CELLS) -> str:
    """The Secret holding ``user``'s credentials: per-node services have one each, the rest share."""
    for cell in cells:
        if cell.per_node and user.startswith(cell.name + "-"):
            return f"nodemesh-nats-{cell.name}"
    return "nodemesh-nats-control"


def new_password() -> str:
    """192 random bits as a letter and hex digits: nats-server parses an environment variable it
    substitutes as a config value, so a password starting with a digit or ``-`` would be read as a
    number (and fail), and ``true``/``on`` as a boolean."""
    return "nm" + secrets.token_hex(24)


def _passwords(users: Iterable[str], keep: Mapping[str, str]) -> dict[str, str]:
    return {u: keep.get(u) or new_password() for u in users}


def k8s_secrets(nodes: list[str], keep: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The Secrets for a cluster with these node names (``keep``: user → password to reuse)."""
    if not nodes:
        raise ValueError("name every node of the cluster (--nodes)")
    perms = user_permissions(K8S_CELLS, nodes)
    pw = _passwords(perms, keep or {})
    auth = render_authorization({u: (pw[u], perms[u]) for u in perms})
    groups: dict[str, dict[str, str]] = {}
    for user in perms:
        creds = json.dumps({"nats_user": user, "nats_password": pw[user]})
        groups.setdefault(secret_name(user), {})[f"{user}.json"] = creds
    out = [_secret(SERVER_SECRET, {"auth.conf": auth})]
    out += [_secret(name, data) for name, data in sorted(groups.items())]
    return out


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "nodemesh"},
        },
        "type": "Opaque",
        "stringData": data,
    }


def kept_passwords(kubectl_json: str) -> dict[str, str]:
    """user → password from ``kubectl get secret … -o json`` (one Secret or a List of them)."""
    doc = json.loads(kubectl_json)
    out: dict[str, str] = {}
    for item in doc.get("items", [doc]):
        for key, b64 in (item.get("data") or {}).items():
            if not key.endswith(".json"):
                continue
            creds = json.loads(base64.b64decode(b64))
            out[str(creds["nats_user"])] = str(creds["nats_password"])
    return out


def compose_users(nodes: Iterable[str]) -> dict[str, Permissions]:
    """Every user of the compose cluster (it runs every cell, the DNS service included)."""
    return user_permissions(CELLS, nodes)


def compose_nats_conf(nodes: list[str]) -> str:
    """nats-server's config for compose: JetStream, monitoring, per-service users (passwords by
    ``$NATS_PASSWORD_<USER>`` reference, resolved by nats-server from its environment)."""
    perms = compose_users(nodes)
    marks = {u: f"@@{password_var(u)}@@" for u in perms}
    auth = render_authorization({u: (marks[u], perms[u]) for u in perms})
    for u, mark in marks.items():
        auth = auth.replace(json.dumps(mark), "$" + password_var(u))
    head = [
        "# GENERATED by `python -m localcluster.deploygen compose-nats-conf` (make compose) — do not edit.",
        "# Passwords come from nats-server's environment (compose: deploy/compose/.env).",
        "listen: 0.0.0.0:4222",
        "http: 0.0.0.0:8222",
        'jetstream { store_dir: "/var/lib/nodemesh/nats" }',
        "max_payload: 8MB",
    ]
    return "\n".join(head) + "\n" + auth


def compose_env(nodes: list[str]) -> str:
    """``deploy/compose/.env``: a fresh random password per user."""
    pw = _passwords(compose_users(nodes), {})
    lines = [
        "# NATS passwords for deploy/compose (python -m localcluster.deploygen compose-env); keep private."
    ]
    lines += [f"{password_var(u)}={p}" for u, p in pw.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from localcluster.compose import COMPOSE_CONTEXT

    p = argparse.ArgumentParser(prog="python -m localcluster.deploygen", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    k8s = sub.add_parser("k8s-secrets", help="the NATS Secrets for deploy/k8s (kubectl apply -f -)")
    k8s.add_argument("--nodes", required=True, help="comma-separated names of every node")
    k8s.add_argument(
        "--keep", default="", help="`kubectl get secret -o json` output whose passwords to reuse"
    )
    sub.add_parser("compose-nats-conf", help="deploy/compose/nats.conf")
    sub.add_parser("compose-env", help="deploy/compose/.env (fresh passwords)")
    pki = sub.add_parser("xds-pki", help="xDS node certificates for deploy/compose (kept if present)")
    pki.add_argument("--dir", required=True, help="where (deploy/compose/pki for compose)")
    pki.add_argument("--nodes", default="", help="comma-separated node names (default: compose's)")
    ns = p.parse_args(argv)
    if ns.what == "k8s-secrets":
        nodes = [n.strip() for n in ns.nodes.split(",") if n.strip()]
        keep: dict[str, str] = {}
        if ns.keep:
            with open(ns.keep) as fh:
                keep = kept_passwords(fh.read())
        try:
            docs = k8s_secrets(nodes, keep)
        except ValueError as e:
            p.error(str(e))
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, width=10_000))
    elif ns.what == "xds-pki":
        nodes = [n.strip() for n in ns.nodes.split(",") if n.strip()] or list(COMPOSE_CONTEXT.nodes)
        ensure_pki(Path(ns.dir), nodes, ["xds", "127.0.0.1", "localhost"])
        print(f"xDS PKI for {', '.join(nodes)} in {ns.dir}", file=sys.stderr)
    elif ns.what == "compose-nats-conf":
        sys.stdout.write(compose_nats_conf(list(COMPOSE_CONTEXT.nodes)))
    else:
        sys.stdout.write(compose_env(list(COMPOSE_CONTEXT.nodes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
