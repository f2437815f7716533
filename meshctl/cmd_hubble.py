"""``nodemesh hubble serve``: an ``observer.Observer`` gRPC endpoint for the hubble CLI.

``hubble observe --server 127.0.0.1:4245`` (and ``hubble status``, ``hubble list nodes``) then read
nodemesh's flows (meshctl/observer_server.py). Flags only here: the server is imported when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshctl.natsopts import add_nats_options

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("hubble", help="serve Hubble's Observer API (for the hubble CLI)")
    hsub = p.add_subparsers(dest="hubble_command", metavar="COMMAND", required=True)
    s = hsub.add_parser("serve", help="serve observer.Observer (GetFlows, ServerStatus, GetNodes)")
    s.add_argument("--listen", default="127.0.0.1:4245", help="address:port (default 127.0.0.1:4245)")
    s.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")
    add_nats_options(s)
    s.set_defaults(func=_serve)


async def _run(args: argparse.Namespace) -> int:
    from meshctl.observe_stream import connect_admin
    from meshctl.observer_server import ObserverServer

    bus = await connect_admin(args, "nodemesh-hubble")
    server = ObserverServer(bus)
    try:
        port = await server.start(args.listen)
        host = args.listen.rpartition(":")[0] or "127.0.0.1"
        print(
            f"serving observer.Observer on {host}:{port} (hubble observe --server {host}:{port})", flush=True
        )
        await server.wait()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await server.stop()
        await bus.nc.close()
    return 0


def _serve(args: argparse.Namespace) -> Any:
    return _run(args)
