"""``nodemesh service list``: the Services each node's socket load-balancer serves, like
``cilium service list``.

Read from the node's pinned LB maps (``bpf()`` on the pins, no BCC), so it shows what the kernel
rewrites ``connect()`` to, not what the API server asks for; each frontend is named after the
Service the node's agent wrote it for (services/datapath/lb/listing.py). Needs root (the pins).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

import msgspec

from localcluster.layout import data_dir, load_cluster
from nodemesh.errors import NodemeshError
from nodemesh.nodestate import read_datapath_state
from services.datapath.lb.listing import ServiceRow, list_services, read_names
from services.datapath.lb.maps import LbMaps

__all__ = ["node_services", "register", "table_lines"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("service", help="Services the datapath load-balances (like cilium service)")
    ssub = p.add_subparsers(dest="service_command", metavar="COMMAND")
    ls = ssub.add_parser("list", help="frontends, their Service, type and backends, from the nodes' LB maps")
    ls.add_argument(
        "--node", action="append", default=[], help="only this node (repeatable; default: every node)"
    )
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ls.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def node_services(node: str, node_dir: Path) -> list[ServiceRow]:
    """What ``node``'s maps serve. Raises NodemeshError when they cannot be read."""
    state = read_datapath_state(node_dir)
    if state is None or not state.pin_dir:
        raise NodemeshError(f"node {node}: no datapath state in {node_dir} (has its datapath started?)")
    try:
        maps = LbMaps(state.pin_dir)
    except FileNotFoundError as e:
        raise NodemeshError(
            f"node {node}: no socket load-balancer maps in {state.pin_dir} "
            "(datapath not loaded, or started with --lb false)"
        ) from e
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise NodemeshError(f"node {node}: reading the BPF maps in {state.pin_dir} needs root") from e
        raise NodemeshError(f"node {node}: cannot open the LB maps in {state.pin_dir}: {e}") from e
    try:
        lb_state = maps.read_state()
    finally:
        maps.close()
    return list_services(lb_state, read_names(node_dir), node=node)


def table_lines(rows: list[ServiceRow]) -> list[str]:
    """NODE ID FRONTEND SERVICE TYPE BACKEND, one backend per line (as cilium service list)."""
    out = [["NODE", "ID", "FRONTEND", "SERVICE", "TYPE", "BACKEND"]]
    for r in rows:
        svc = f"{r.namespace}/{r.name}" + (f":{r.port_name}" if r.port_name else "") if r.name else "-"
        typ = (
            r.type
            + (" (Local)" if r.traffic_policy_local else "")
            + (" (L7: Envoy)" if r.l7_proxy_port else "")
        )
        bes = [f"{i + 1} => {b.address} ({b.state})" for i, b in enumerate(r.backends)] or ["(none: refused)"]
        out.append([r.node, str(r.id), r.frontend, svc, typ, bes[0]])
        out.extend(["", "", "", "", "", b] for b in bes[1:])
    widths = [max(len(row[i]) for row in out) for i in range(len(out[0]))]
    return ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in out]


def _list(args: argparse.Namespace) -> int:
    explicit = getattr(args, "sub_data_dir", None) or args.data_dir
    cluster = load_cluster(str(data_dir(explicit)))
    known = [n.name for n in cluster.nodes]
    unknown = [n for n in args.node if n not in known]
    if unknown:
        raise NodemeshError(f"unknown node {', '.join(unknown)} (nodes: {', '.join(known)})")
    rows: list[ServiceRow] = []
    for node in args.node or known:
        rows.extend(node_services(node, Path(cluster.data_dir) / "nodes" / node))
    if args.output == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows), indent=2).decode() + "\n")
    else:
        for line in table_lines(rows):
            print(line)
    return 0
