"""``nodemesh status --nats-url …``: a cluster's state as NATS shows it, for clusters not run locally.

Without the local supervisor there are no processes to list; what NATS knows is enough to see a
cluster is whole: every nodemesh service answers ``$SRV.PING`` (the NATS micro service each process
runs, ``nodemesh-<service>``), and JetStream lists the streams and buckets with their sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from localcluster.control import add_stream_inventory
from meshctl.natsopts import connect_cli

__all__ = ["print_remote_status", "remote_status"]


async def remote_status(args: argparse.Namespace, wait: float = 1.0) -> dict[str, Any]:
    bus, target = await connect_cli(args, "nodemesh-status")
    out: dict[str, Any] = {"url": target.url, "services": {}, "streams": [], "buckets": []}
    try:
        replies: list[dict[str, Any]] = []
        inbox = bus.nc.new_inbox()

        async def got(msg: Any) -> None:
            try:
                doc = json.loads(msg.data)
            except ValueError:
                return
            if isinstance(doc, dict):
                replies.append(doc)

        sub = await bus.nc.subscribe(inbox, cb=got)
        await bus.nc.publish("$SRV.PING", b"", reply=inbox)
        await asyncio.sleep(wait)  # every instance answers once; collect what came in the window
        await sub.unsubscribe()
        for r in replies:
            name = str(r.get("name", ""))
            entry = out["services"].setdefault(name, {"instances": 0, "versions": []})
            entry["instances"] += 1
            if r.get("version") and r["version"] not in entry["versions"]:
                entry["versions"].append(str(r["version"]))
        try:
            add_stream_inventory(out, await asyncio.wait_for(bus.js.streams_info(), 5))
        except Exception as e:  # a user without JetStream API rights still sees the services
            out["jetstream_error"] = str(e) or type(e).__name__
    finally:
        await bus.nc.close()
    return out


async def print_remote_status(args: argparse.Namespace) -> int:
    st = await remote_status(args)
    if args.output == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"NATS {st['url']}: reachable")
    print()
    rows = [["SERVICE", "INSTANCES", "VERSION"]]
    for name in sorted(st["services"]):
        e = st["services"][name]
        rows.append([name, str(e["instances"]), ",".join(e["versions"]) or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    if "jetstream_error" in st:
        print(f"  JetStream: {st['jetstream_error']}")
    else:
        print("  streams: " + ", ".join(f"{s['name']} ({s['messages']} msgs)" for s in st["streams"]))
        print("  buckets: " + ", ".join(f"{b['name']} ({b['messages']})" for b in st["buckets"]))
    return 0
