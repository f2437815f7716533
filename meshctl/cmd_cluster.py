"""``nodemesh up``, ``down`` and ``status``: the local cluster's lifecycle."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from localcluster.layout import data_dir
from meshctl.natsopts import add_nats_options

__all__ = ["register"]


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    # A separate dest: a subparser default would otherwise overwrite the global --data-dir.
    p.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")


def _dir(args: argparse.Namespace) -> Any:
    return data_dir(getattr(args, "sub_data_dir", None) or args.data_dir)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start a local cluster (nats, API server, services, Envoy per node)")
    _data_dir_arg(p)
    p.add_argument("--nodes", type=int, default=1, help="number of simulated nodes (default 1)")
    p.add_argument("--manifests", default="", help="directory of manifests the API server loads and watches")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the cluster")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    p.add_argument(
        "--node-grace",
        type=float,
        default=40.0,
        help="seconds without a heartbeat from a node's agents before the node turns NotReady (default 40)",
    )
    p.add_argument(
        "--pod-eviction-timeout",
        type=int,
        default=300,
        help="seconds pods stay on a NotReady node before they are evicted and recreated (default 300)",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus scraping every process, and the service map page (nodemesh ui)",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="stop the local cluster and remove what it created")
    _data_dir_arg(p)
    p.set_defaults(func=_down)

    p = sub.add_parser(
        "status",
        help="processes, NATS and nodes of the local cluster (with --nats-url: services and streams)",
    )
    _data_dir_arg(p)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_nats_options(p)
    p.set_defaults(func=_status)


# localcluster.control (the supervisor, the datapath's cleanup) is imported by the verbs that use
# it: `status` must not pay for netlink and the supervisor (see meshctl/main.py)
def _up(args: argparse.Namespace) -> int:
    from localcluster.control import up

    if args.nodes < 1 or args.nodes > 200:
        print("error: --nodes must be between 1 and 200")
        return 2
    if not args.node_grace > 0 or args.pod_eviction_timeout < 0:
        print("error: --node-grace must be positive and --pod-eviction-timeout not negative")
        return 2
    return up(
        _dir(args),
        args.nodes,
        args.manifests,
        args.foreground,
        args.timeout,
        node_grace=args.node_grace,
        eviction=args.pod_eviction_timeout,
        monitoring=args.monitoring,
    )


def _down(args: argparse.Namespace) -> int:
    from localcluster.control import down

    return down(_dir(args))


def _status(args: argparse.Namespace) -> Any:
    if getattr(args, "nats_url", "") or os.environ.get("NODEMESH_NATS_URL"):
        from meshctl.remote_status import print_remote_status

        return print_remote_status(args)  # a coroutine: main runs it
    from localcluster.control import cluster_status

    st = cluster_status(_dir(args))
    if args.output == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0 if st["up"] else 1
    if not st["up"]:
        print(f"no nodemesh cluster running in {st['data_dir']} (run `nodemesh up`)")
        return 1
    version = st["cluster"].get("version", "")
    print(f"nodemesh {version} in {st['data_dir']} (supervisor pid {st['supervisor_pid']})")
    print()
    rows = [["PROCESS", "RUNNING", "READY", "VERSION", "RESTARTS", "PID", "HEALTH-PORT"]]
    for p in st["processes"]:
        rows.append(
            [
                p["name"],
                "yes" if p["running"] else "no",
                "yes" if p["ready"] else "no",
                p["version"] or "-",
                str(p["restarts"]),
                str(p["pid"] or "-"),
                str(p["health_port"] or "-"),
            ]
        )
    _table(rows)
    nats = st["nats"]
    print()
    state = "reachable" if nats["reachable"] else f"NOT reachable ({nats.get('error', '')})"
    print(f"NATS {nats['url']}: {state}")
    cl = st["cluster"]
    if cl.get("prometheus_url"):
        print(f"Prometheus {cl['prometheus_url']}   service map {cl.get('ui_url', '')}")
    if nats["reachable"]:
        print("  streams: " + ", ".join(f"{s['name']} ({s['messages']} msgs)" for s in nats["streams"]))
        print("  buckets: " + ", ".join(f"{b['name']} ({b['messages']})" for b in nats["buckets"]))
    print()
    nodes = st["nodes"]
    if isinstance(nodes, str):
        print(f"nodes: unavailable ({nodes})")
    else:
        rows = [["NODE", "READY", "POD-CIDR", "ADDRESSES"]]
        rows += [
            [n["name"], str(n["ready"]), n["podCIDR"], ",".join(a for a in n["addresses"] if a)]
            for n in nodes
        ]
        _table(rows)
    return 0


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
