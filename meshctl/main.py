"""``nodemesh``: the CLI entry point.

Subcommands live in ``meshctl/cmd_<topic>.py`` modules, each exposing
``register(sub: argparse._SubParsersAction) -> None``; a parser it adds sets ``func`` (a callable
taking the parsed args and returning an exit code, or an ``async`` one). Modules are discovered
here, so adding a topic never edits this file.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import pkgutil
import sys
from collections.abc import Sequence

import meshctl as cli_pkg
from nodemesh import __version__
from nodemesh.errors import NodemeshError

__all__ = ["build_parser", "main"]

DEFAULT_DATA_DIR = "/var/lib/nodemesh"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodemesh", description="nodemesh: a sidecarless service mesh")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"local cluster state (default: $NODEMESH_DATA_DIR or {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="a real cluster's kubeconfig for get/apply/delete/describe "
        "(default: $KUBECONFIG, else the local cluster)",
    )
    parser.add_argument("--context", default=None, help="the kubeconfig context to use")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ver = sub.add_parser("version", help="the client's version and the running local cluster's")
    ver.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ver.set_defaults(func=_version)
    for mod in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            module = importlib.import_module(f"meshctl.{mod.name}")
            module.register(sub)
    return parser


def _version(args: argparse.Namespace) -> int:
    """Client and cluster versions, like ``kubectl version`` (the cluster's from its run/cluster.json)."""
    import json
    import os
    from pathlib import Path

    d = Path(args.data_dir or os.environ.get("NODEMESH_DATA_DIR") or DEFAULT_DATA_DIR)
    cluster = ""
    try:
        cluster = str(json.loads((d / "run" / "cluster.json").read_bytes()).get("version") or "unknown")
    except (OSError, ValueError, AttributeError):
        pass
    if args.output == "json":
        print(json.dumps({"client": __version__, "cluster": cluster or None, "data_dir": str(d)}))
    else:
        print(f"nodemesh {__version__}")  # first line as before: scripts read it
        print(f"Cluster: {cluster} ({d})" if cluster else f"Cluster: none running in {d}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except NodemeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
