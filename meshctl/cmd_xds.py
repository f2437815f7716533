"""``nodemesh xds status``: what each node's Envoy runs — applied, pending, or rejected with Envoy's reason.

Asks an xds replica on ``xds.status``. By default only problems are listed (pending and rejected
resources) plus a per-node summary; ``--all`` lists every resource. A NACKed CiliumEnvoyConfig shows
up here with its qualified resource name (``<ns>/<cec>/<name>``) and Envoy's error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from meshctl.natsopts import add_nats_options, connect_cli
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.xds import XdsStatusReply, XdsStatusRequest

__all__ = ["register", "render"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("xds", help="Envoy configuration state per node (applied, pending, rejected)")
    xsub = p.add_subparsers(dest="xds_command", metavar="SUBCOMMAND")
    sp = xsub.add_parser("status", help="per node: resources Envoy has not applied, and NACK reasons")
    sp.add_argument("--node", default="", help="only this node")
    sp.add_argument("--all", action="store_true", help="list applied resources too")
    sp.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_nats_options(sp)
    sp.add_argument("--timeout", type=float, default=5.0)
    sp.set_defaults(func=_status)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


async def _connect(args: argparse.Namespace) -> Bus:
    bus, _ = await connect_cli(args, "nodemesh-xds-cli")
    return bus


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def render(reply: XdsStatusReply) -> str:
    """The reply as a table: one summary line per node, then one row per listed resource."""
    lines = []
    rows: list[list[str]] = [["NODE", "TYPE", "NAME", "STATE", "ERROR"]]
    for n in reply.nodes:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(n.counts.items())) or "no configuration"
        lines.append(f"{n.node}: {counts}; {n.streams} ADS stream(s) on {reply.replica}")
        for r in n.resources:
            rows.append([n.node, _short(r.type_url), r.name, r.state, r.error.strip().replace("\n", " | ")])
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines.append("")
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=False)) + "  " + row[4])
    return "\n".join(lines)


async def _status(args: argparse.Namespace) -> int:
    bus = await _connect(args)
    try:
        req = XdsStatusRequest(node=args.node, problems_only=not args.all)
        reply = await bus.request(subjects.XDS_STATUS, req, XdsStatusReply, timeout=args.timeout)
    finally:
        await bus.nc.close()
    if args.output == "json":
        data: Any = msgspec.to_builtins(reply)
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render(reply))
    return 1 if any(r.state == "rejected" for n in reply.nodes for r in n.resources) else 0
