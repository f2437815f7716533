"""How the NATS-backed commands reach a cluster: the local data dir by default, or any NATS.

``observe``, ``hubble``, ``identity``/``ipcache``/``trust``, ``auth`` and ``xds`` take the same
options, so they work against a remote cluster (e.g. a port-forward to the Kubernetes NATS Service):

- ``--nats-url`` (or ``$NODEMESH_NATS_URL``): the server(s), comma-separated;
- credentials: ``--nats-creds FILE`` — the deployments' Secret format (JSON ``{"nats_user",
  "nats_password"}``, what ``localcluster.deploygen k8s-secrets`` writes for ``admin``) or a NATS
  ``.creds`` file (JWT and seed) — or ``--nats-user`` with ``--nats-password`` (or
  ``$NODEMESH_NATS_USER``/``$NODEMESH_NATS_PASSWORD``);
- ``--nats-ca FILE``: verify the server's TLS certificate against this CA (``tls://`` URLs).

Without ``--nats-url`` the local cluster's URL and admin credentials come from the data dir.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nodemesh.errors import NodemeshError

if TYPE_CHECKING:
    from nodemesh.bus import Bus

# Registering the options imports nothing heavy (the CLI's lazy-import rule): nats and the data-dir
# layout are imported only when a command connects.

__all__ = ["NatsTarget", "add_nats_options", "connect_cli", "nats_target"]


def add_nats_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NATS (default: the local cluster of the data dir)")
    g.add_argument(
        "--nats-url", default="", help="NATS URL(s) of a cluster, comma-separated ($NODEMESH_NATS_URL)"
    )
    g.add_argument(
        "--nats-creds",
        default="",
        help='JSON {"nats_user", "nats_password"} (the deployments\' Secret) or a NATS .creds file',
    )
    g.add_argument("--nats-user", default="", help="NATS user ($NODEMESH_NATS_USER)")
    g.add_argument("--nats-password", default="", help="NATS password ($NODEMESH_NATS_PASSWORD)")
    g.add_argument("--nats-ca", default="", help="CA certificate (PEM) to verify the NATS server's TLS")
    g.add_argument("--nats-timeout", type=float, default=10.0, help="seconds to wait for NATS (default 10)")


class NatsTarget:
    """Where and as whom to connect (``local``: from the data dir; ``nodes``: the local cluster's)."""

    def __init__(
        self,
        url: str,
        user: str = "",
        password: str = "",
        creds_file: str = "",
        ca: str = "",
        local: bool = False,
        nodes: list[str] | None = None,
    ) -> None:
        self.url, self.user, self.password = url, user, password
        self.creds_file, self.ca, self.local = creds_file, ca, local
        self.nodes = nodes or []


def nats_target(args: argparse.Namespace) -> NatsTarget:
    """The target the options (and environment) name; pure apart from reading the named files."""
    url = getattr(args, "nats_url", "") or os.environ.get("NODEMESH_NATS_URL", "")
    ca = getattr(args, "nats_ca", "")
    if ca and not Path(ca).is_file():
        raise NodemeshError(f"--nats-ca {ca}: no such file")
    if not url:
        from localcluster.layout import data_dir, load_cluster, load_credentials

        explicit = getattr(args, "sub_data_dir", None) or getattr(args, "data_dir", None)
        d = str(data_dir(explicit))
        cluster = load_cluster(d)
        user, password = load_credentials(d, "admin")
        return NatsTarget(
            cluster.nats_url, user, password, ca=ca, local=True, nodes=[n.name for n in cluster.nodes]
        )
    user = getattr(args, "nats_user", "") or os.environ.get("NODEMESH_NATS_USER", "")
    password = getattr(args, "nats_password", "") or os.environ.get("NODEMESH_NATS_PASSWORD", "")
    creds = getattr(args, "nats_creds", "")
    if creds:
        try:
            text = Path(creds).read_text()
        except OSError as e:
            raise NodemeshError(f"--nats-creds {creds}: {e}") from e
        if "-----BEGIN NATS USER JWT-----" in text:
            return NatsTarget(url, creds_file=creds, ca=ca)
        try:
            doc = json.loads(text)
            user, password = str(doc["nats_user"]), str(doc["nats_password"])
        except (ValueError, KeyError, TypeError) as e:
            raise NodemeshError(
                f'--nats-creds {creds}: neither JSON {{"nats_user", "nats_password"}} nor a NATS .creds file'
            ) from e
    if password and not user:
        raise NodemeshError("--nats-password without --nats-user")
    return NatsTarget(url, user, password, ca=ca)


async def connect_cli(args: argparse.Namespace, name: str) -> tuple[Bus, NatsTarget]:
    import asyncio
    import ssl

    from nodemesh.bus import connect

    t = nats_target(args)
    wait = float(getattr(args, "nats_timeout", 10.0))
    try:
        tls = ssl.create_default_context(cafile=t.ca) if t.ca else None
    except (OSError, ssl.SSLError) as e:
        raise NodemeshError(f"--nats-ca {t.ca}: {e}") from e
    as_whom = t.user or (t.creds_file and "the .creds file's user") or "no user"
    try:
        # nats-py retries a refused login for as long as reconnects are allowed: bound it here.
        bus = await asyncio.wait_for(
            connect(
                t.url,
                name=name,
                user=t.user,
                password=t.password,
                user_credentials=t.creds_file,
                tls=tls,
                max_wait=wait,
            ),
            wait + 2.0,
        )
    except TimeoutError:
        raise NodemeshError(
            f"cannot connect to NATS at {t.url} as {as_whom} within {wait:g}s "
            "(is it reachable, are the credentials right?)"
        ) from None
    return bus, t
