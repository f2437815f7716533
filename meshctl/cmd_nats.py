"""``nodemesh nats provision``: the admin step that creates every JetStream stream and KV bucket.

Services may not create, update or delete streams (nodemesh/natsauth.py); they wait at start until
this has run. The local supervisor runs it itself; compose runs it as the one-shot ``provision``
service and Kubernetes as the ``nodemesh-provision`` Job, both as the NATS ``admin`` user (whose
password is in ``$NODEMESH_NATS_PASSWORD`` or a ``--config`` JSON file
``{"nats_user", "nats_password"}``, the deployments' Secret format). Re-running it is harmless.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import nats.errors
import nats.js.errors

from localcluster.layout import data_dir, load_cluster, load_credentials
from nodemesh.bus import connect
from nodemesh.errors import NodemeshError
from nodemesh.streams import missing, provision

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("nats", help="NATS administration (the admin step)")
    nsub = p.add_subparsers(dest="nats_command", metavar="SUBCOMMAND")
    pp = nsub.add_parser("provision", help="create or update every stream and bucket (as admin)")
    pp.add_argument("--nats-url", default="", help="NATS URL (default: the local cluster's)")
    pp.add_argument("--config", default="", help='JSON {"nats_user", "nats_password"} (a mounted Secret)')
    pp.add_argument("--replicas", type=int, default=1, help="stream replicas (3 on a NATS cluster)")
    pp.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for NATS")
    pp.set_defaults(func=_provision)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _credentials(args: argparse.Namespace) -> tuple[str, str, str]:
    user = os.environ.get("NODEMESH_NATS_USER", "")
    password = os.environ.get("NODEMESH_NATS_PASSWORD", "")
    if args.config:
        try:
            doc = json.loads(Path(args.config).read_text())
            user, password = str(doc["nats_user"]), str(doc["nats_password"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NodemeshError(f"{args.config}: not a NATS credential file: {e}") from e
    url = args.nats_url or os.environ.get("NODEMESH_NATS_URL", "")
    if not url:
        d = str(data_dir(args.data_dir))
        url = load_cluster(d).nats_url
        user, password = load_credentials(d, "admin")
    return url, user, password


async def _provision(args: argparse.Namespace) -> int:
    url, user, password = _credentials(args)
    bus = await connect(url, name="nodemesh-provision", user=user, password=password, max_wait=args.max_wait)
    try:
        await provision(bus.js, replicas=args.replicas)
        gone = await missing(bus.js)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as e:
        # A service user's request is refused by nats-server (a permissions violation, no answer).
        raise NodemeshError(
            f"provisioning as {user or 'no user'} failed ({type(e).__name__}: {e}); "
            "only the NATS admin user may create streams"
        ) from None
    finally:
        await bus.nc.close()
    if gone:
        raise NodemeshError(f"streams still missing after provisioning: {', '.join(gone)}")
    print("streams and buckets provisioned")
    return 0
