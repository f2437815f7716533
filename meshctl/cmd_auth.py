"""``nodemesh auth list``: mutual-authentication entries of every node (or one), from each node's authd.

Each authd answers ``auth.list.<node>``; nodes are taken from ``--node``, else from KV ``nodes``,
else from the local cluster file. A node whose authd does not answer is reported on stderr and
makes the exit code 1, but the other nodes are still listed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

import msgspec

from meshctl.natsopts import add_nats_options, connect_cli
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.errors import BusError, NodemeshError
from nodemesh.messages.auth import AUTH_TYPE_NAMES, AuthEntry, AuthListReply, AuthListRequest
from nodemesh.streams import BUCKET_NODES

__all__ = ["register", "render_table"]

HEADER = ["NODE", "LOCAL", "REMOTE", "REMOTE NODE", "TYPE", "STATE", "EXPIRES IN", "VIA", "LAST ERROR"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("auth", help="mutual authentication (SPIFFE) state")
    asub = p.add_subparsers(dest="auth_command", metavar="SUBCOMMAND")
    lp = asub.add_parser("list", help="auth entries per node: pairs, remote node, expiry, state, last error")
    lp.add_argument("-o", "--output", choices=("table", "json"), default="table")
    lp.add_argument("--node", action="append", default=[], help="only this node (repeatable)")
    lp.add_argument("--state", default="", help="only entries in this state (authenticated, failed, ...)")
    add_nats_options(lp)
    lp.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each node's authd")
    lp.set_defaults(func=_list)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


async def _connect(args: argparse.Namespace) -> tuple[Bus, list[str]]:
    bus, target = await connect_cli(args, "nodemesh-auth")
    return bus, target.nodes


async def _nodes(bus: Bus, fallback: list[str]) -> list[str]:
    try:
        kv = await bus.kv(BUCKET_NODES.name)
        return sorted(await kv.keys())
    except Exception:  # no bucket or no keys yet
        return fallback


async def collect(
    bus: Bus, nodes: list[str], state: str, timeout: float
) -> tuple[list[AuthListReply], list[str]]:
    replies, errors = [], []
    for node in nodes:
        try:
            replies.append(
                await bus.request(
                    subjects.auth_list(node), AuthListRequest(state=state), AuthListReply, timeout=timeout
                )
            )
        except (BusError, NodemeshError) as e:
            errors.append(f"{node}: {e}")
    return replies, errors


async def _list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus, fallback = await _connect(args)
    try:
        nodes = args.node or await _nodes(bus, fallback)
        if not nodes:
            raise NodemeshError("no nodes known (KV nodes is empty); name one with --node")
        replies, errors = await collect(bus, nodes, args.state, args.timeout)
    finally:
        await bus.nc.close()
    entries = [e for r in replies for e in r.entries]
    if args.output == "json":
        out.write(json.dumps([_json(e) for e in entries], indent=2) + "\n")
    else:
        out.write(render_table(entries, time.time()))
    for err in errors:
        print(f"error: no answer from authd on {err}", file=sys.stderr)
    return 1 if errors else 0


def _json(e: AuthEntry) -> dict[str, Any]:
    d: dict[str, Any] = msgspec.to_builtins(e)
    d["auth_type_name"] = AUTH_TYPE_NAMES.get(e.key.auth_type, str(e.key.auth_type))
    return d


def _expires_in(expires: float, now: float) -> str:
    if not expires:
        return "-"
    left = expires - now
    if left <= 0:
        return "expired"
    return f"{left:.0f}s" if left < 120 else f"{left / 60:.0f}m"


def render_table(entries: list[AuthEntry], now: float) -> str:
    rows = [HEADER]
    for e in sorted(entries, key=lambda e: (e.node, e.key)):
        rows.append(
            [
                e.node,
                str(e.key.local_identity),
                str(e.key.remote_identity),
                e.key.remote_node or "-",
                AUTH_TYPE_NAMES.get(e.key.auth_type, str(e.key.auth_type)),
                e.state,
                _expires_in(e.expires, now) if e.state == "authenticated" else "-",
                (e.via or "-") + (" (proactive)" if e.proactive else ""),
                e.last_error or "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )
