"""``nodemesh``: the CLI entry point.

Subcommands live in ``meshctl/cmd_<topic>.py`` modules, each exposing
``register(sub: argparse._SubParsersAction) -> None``; a parser it adds sets ``func`` (a callable
taking the parsed args and returning an exit code, or an ``async`` one). Modules are discovered
here, so adding a topic never edits this file.

A CLI should answer in tens of milliseconds, and most of a Python CLI's time is imports. So a run
imports only the module of the verb it was given (:data:`VERB_MODULES`; the modules keep what only
some of their verbs need inside those verbs' functions). Help, or a verb not in the table (a new
topic), imports every module, as before. ``tests/cli/test_lazy_imports.py`` checks the table
against what the modules register and that the light verbs stay light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from collections.abc import Sequence

import meshctl as cli_pkg
from nodemesh import __version__
from nodemesh.errors import NodemeshError

__all__ = ["VERB_MODULES", "build_parser", "main"]

DEFAULT_DATA_DIR = "/var/lib/nodemesh"

#: top-level verb → the ``meshctl`` module that registers it
VERB_MODULES = {
    "apply": "cmd_resources",
    "auth": "cmd_auth",
    "connectivity": "cmd_connectivity",
    "delete": "cmd_resources",
    "describe": "cmd_resources",
    "down": "cmd_cluster",
    "exec": "cmd_exec",
    "get": "cmd_resources",
    "hubble": "cmd_hubble",
    "identity": "cmd_identity",
    "logs": "cmd_logs",
    "nats": "cmd_nats",
    "ipcache": "cmd_identity",
    "observe": "cmd_observe",
    "service": "cmd_service",
    "status": "cmd_cluster",
    "trust": "cmd_identity",
    "ui": "cmd_ui",
    "up": "cmd_cluster",
    "xds": "cmd_xds",
}
#: verbs that only talk to NATS (and maybe the API server): nats-py's WebSocket transport, which
#: imports aiohttp, is never used by them (see nodemesh/leanimports.py)
_NATS_ONLY = {"auth", "identity", "ipcache", "observe", "status", "trust", "xds"}


_GLOBAL_OPTIONS = ("--data-dir", "--kubeconfig", "--context")


def _verb(argv: Sequence[str]) -> str | None:
    """The verb in ``argv`` (skipping the global options and their values), None for help or no verb."""
    it = iter(argv)
    for a in it:
        if a in _GLOBAL_OPTIONS:
            next(it, None)
        elif a.split("=", 1)[0] in _GLOBAL_OPTIONS:
            continue
        elif a.startswith("-"):
            return None  # -h/--help or an unknown option: the full parser answers
        else:
            return a
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known ``verb``, only that verb's module is imported and registered."""
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
    if verb == "version":
        return parser
    if verb in VERB_MODULES:
        names = [VERB_MODULES[verb]]
    else:
        import pkgutil

        names = sorted(m.name for m in pkgutil.iter_modules(cli_pkg.__path__) if m.name.startswith("cmd_"))
    for name in names:
        importlib.import_module(f"meshctl.{name}").register(sub)
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
    as_process = argv is None  # the console script; tests call main([...]) inside their own process
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _verb(argv)
    if as_process and verb in _NATS_ONLY:
        # only in a process of its own: blocking aiohttp inside a caller's process would break it
        from nodemesh.leanimports import without_nats_websocket

        without_nats_websocket()
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        if isinstance(result, types.CoroutineType):
            import asyncio

            result = asyncio.run(result)
    except NodemeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
