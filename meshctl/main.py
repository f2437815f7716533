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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=lambda _a: print(f"nodemesh {__version__}") or 0)
    for mod in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            module = importlib.import_module(f"meshctl.{mod.name}")
            module.register(sub)
    return parser


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
