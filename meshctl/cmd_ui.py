"""``nodemesh ui``: serve the service map page for the local cluster (see :mod:`meshctl.ui`).

Reads flows from the cluster's NATS with the admin credentials of the data dir, like ``observe``;
serves on 127.0.0.1 unless told otherwise, and runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from localcluster.layout import data_dir, load_cluster, load_credentials
from nodemesh.bus import connect

__all__ = ["register", "serve"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ui", help="the service map page: workloads, connections, live flows")
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=12000, help="listen port (default 12000)")
    p.add_argument("--keep", type=int, default=5000, help="flows kept in memory for the page")
    p.set_defaults(func=_ui)


async def serve(nats_url: str, user: str, password: str, address: str, port: int, keep: int) -> None:
    from .ui.server import FlowFeed, make_app

    bus = await connect(nats_url, name="nodemesh-ui", user=user, password=password, max_wait=10)
    feed = FlowFeed(bus, keep)
    await feed.start()
    runner = web.AppRunner(make_app(feed))
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port).start()
        print(f"service map on http://{address}:{port}/ (Ctrl-C stops)", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await feed.stop()
        await bus.nc.close()


async def _ui(args: argparse.Namespace) -> int:
    d = str(data_dir(args.data_dir))
    cluster = load_cluster(d)
    user, password = load_credentials(d, "admin")
    await serve(cluster.nats_url, user, password, args.address, args.port, args.keep)
    return 0
