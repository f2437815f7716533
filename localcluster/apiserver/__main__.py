"""``python -m localcluster.apiserver --data-dir D --port P --nodes N [--manifests DIR] [--lb-pool CIDR]
[--dns-addr IP] [--node-monitor-grace-period S] [--default-toleration-seconds S]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
from pathlib import Path

from localcluster.apiserver.app import LocalApi
from localcluster.layout import ensure_api_token
from nodemesh.log import setup_logging


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="nodemesh-localapi", description="nodemesh local Kubernetes-protocol API server"
    )
    p.add_argument("--data-dir", required=True, help="state directory; the store is <data-dir>/api/store.db")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="listen port (0: a free one, printed at start)")
    p.add_argument("--nodes", type=int, default=1, help="simulated nodes node-1..N (Node objects)")
    p.add_argument("--manifests", default=None, help="directory of YAML manifests kept applied")
    p.add_argument("--lb-pool", default="127.0.100.0/24", help="LB-IPAM pool for LoadBalancer Services")
    p.add_argument(
        "--dns-addr",
        default="",
        help="the cluster DNS server's address: creates kube-system/kube-dns (10.96.0.10) pointing there",
    )
    p.add_argument(
        "--node-monitor-grace-period",
        type=float,
        default=0.0,
        help="seconds without a node heartbeat before the Node turns Ready=Unknown and is tainted"
        " (kube-controller-manager's flag; 0: Nodes are static and always Ready, the default)",
    )
    p.add_argument(
        "--default-toleration-seconds",
        type=int,
        default=300,
        help="how long pods tolerate a not-ready/unreachable node before eviction (with heartbeats)",
    )
    p.add_argument("--history", type=int, default=10_000, help="watch events kept (older RVs get 410)")
    p.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds between watch BOOKMARKs")
    p.add_argument(
        "--token-file",
        default="",
        help="bearer token every request needs (default <data-dir>/api/token, created 0600 if missing)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="json", help="json or text")
    args = p.parse_args(argv)
    try:
        ipaddress.ip_network(args.lb_pool, strict=False)
    except ValueError as e:
        p.error(f"--lb-pool: {e}")
    if args.dns_addr:
        try:
            ipaddress.ip_address(args.dns_addr)
        except ValueError as e:
            p.error(f"--dns-addr: {e}")
    if args.nodes < 0 or args.nodes > 250:
        p.error("--nodes must be between 0 and 250 (node-i gets 10.244.i.0/24 and 127.0.50.i)")
    if args.node_monitor_grace_period < 0 or args.default_toleration_seconds < 0:
        p.error("--node-monitor-grace-period and --default-toleration-seconds must not be negative")
    setup_logging("apiserver", "", args.log_level, args.log_format)

    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            p.error(f"--token-file {args.token_file} is empty")
    else:
        token = ensure_api_token(args.data_dir)

    async def run() -> None:
        api = LocalApi(
            args.data_dir,
            host=args.host,
            port=args.port,
            nodes=args.nodes,
            manifests=args.manifests,
            lb_pool=args.lb_pool,
            history=args.history,
            bookmark_interval=args.bookmark_interval,
            dns_addr=args.dns_addr,
            node_grace=args.node_monitor_grace_period,
            toleration_seconds=args.default_toleration_seconds,
            token=token,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await api.start()
        print(f"listening on {api.url}", flush=True)
        await stop.wait()
        await api.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
