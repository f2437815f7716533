"""``nodemesh-cni install``: what the datapath DaemonSet's init container does on each node.

Writes the plugin executable into the CNI binary directory (``/opt/cni/bin``) and a conflist into
the CNI configuration directory (``/etc/cni/net.d``), both atomically (temp file + rename: the
runtime may read either at any moment):

- ``--mode standalone``: ``05-nodemesh.conflist`` with ``nodemesh-cni`` as the only plugin;
- ``--mode chained``: the existing network (the first ``*.conflist``/``*.conf`` in lexical order,
  which is the one the runtime uses) with ``nodemesh-cni`` appended to its plugin list, written as
  ``05-nodemesh.conflist`` so it sorts first. The original file is left as it is.

The plugin is Python: the executable is a two-line wrapper that ``exec``s ``--python -m cni``; that
interpreter (with nodemesh installed) must exist on the node (see docs/kubernetes.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cni.spec import DEFAULT_SOCKET

__all__ = ["CONFLIST", "PLUGIN", "chained_conflist", "main", "standalone_conflist"]

PLUGIN = "nodemesh-cni"
CONFLIST = "05-nodemesh.conflist"


def _plugin_entry(socket: str) -> dict[str, Any]:
    return {"type": PLUGIN, "socket": socket}


def standalone_conflist(socket: str = DEFAULT_SOCKET, name: str = "nodemesh") -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [_plugin_entry(socket)]}


def chained_conflist(existing: dict[str, Any], socket: str = DEFAULT_SOCKET) -> dict[str, Any]:
    """``existing`` (a conflist, or a single-plugin ``.conf``) with nodemesh-cni appended once."""
    if "plugins" in existing:
        plugins = [p for p in existing["plugins"] if p.get("type") != PLUGIN]
        out = {k: v for k, v in existing.items() if k != "plugins"}
    else:
        conf = dict(existing)
        out = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf.get("name", "network")}
        plugins = [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]
    if not plugins:
        raise ValueError("the existing network configuration has no plugins")
    return {**out, "plugins": [*plugins, _plugin_entry(socket)]}


def _existing(conf_dir: Path) -> Path | None:
    files = sorted(
        p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json") and p.name != CONFLIST
    )
    return files[0] if files else None


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(bin_dir: Path, conf_dir: Path, mode: str, socket: str, python: str) -> Path:
    _write(bin_dir / PLUGIN, f'#!/bin/sh\nexec {python} -m cni "$@"\n', 0o755)
    if mode == "standalone":
        conf = standalone_conflist(socket)
    else:
        conf_dir.mkdir(parents=True, exist_ok=True)
        src = _existing(conf_dir)
        if src is None:
            raise SystemExit(f"chained mode: no network configuration in {conf_dir} to chain into")
        conf = chained_conflist(json.loads(src.read_text()), socket)
    out = conf_dir / CONFLIST
    _write(out, json.dumps(conf, indent=2) + "\n", 0o644)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nodemesh-cni install", description=__doc__.split("\n\n")[0])
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--mode", choices=("chained", "standalone"), default="standalone")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the datapath's endpoint socket")
    p.add_argument("--python", default=sys.executable, help="interpreter the wrapper execs")
    a = p.parse_args(argv)
    out = install(Path(a.cni_bin_dir), Path(a.cni_conf_dir), a.mode, a.socket, a.python)
    print(f"installed {Path(a.cni_bin_dir) / PLUGIN} and {out}")
    return 0
