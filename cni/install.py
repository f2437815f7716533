"""``nodemesh-cni install``: what the datapath DaemonSet's init container does on each node.

Writes the plugin executable into the CNI binary directory (``/opt/cni/bin``) and a conflist into
the CNI configuration directory (``/etc/cni/net.d``), both atomically (temp file + rename: the
runtime may read either at any moment):

- ``--mode standalone``: ``05-nodemesh.conflist`` with ``nodemesh-cni`` as the only plugin;
- ``--mode chained``: the existing network (the first ``*.conflist``/``*.conf`` in lexical order,
  which is the one the runtime uses) with ``nodemesh-cni`` appended to its plugin list, written as
  ``05-nodemesh.conflist`` so it sorts first. The original file is left as it is.

The plugin is Python, and the runtime runs it on the host, not in the image. Two ways to give it an
interpreter there:

- ``--bundle-dir /opt/nodemesh-cni`` (what the DaemonSet does): a self-contained copy of the
  interpreter, its shared libraries, the standard library and the plugin's packages under that host
  directory (:mod:`cni.bundle`); the executable is a ``/bin/sh`` launcher that runs it through the
  bundled loader. The node needs nothing but ``/bin/sh``.
- without it: a two-line wrapper that ``exec``s ``--python -m cni``; that interpreter, with nodemesh
  installed, must exist on the node (the test harness uses the test's own interpreter).

``--host-root /host``: every directory above is given as the host sees it and written under
``/host`` (where the init container mounts the host's directories), so the launcher names the
host's paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cni.spec import DEFAULT_SOCKET

__all__ = ["CONFLIST", "PLUGIN", "chained_conflist", "install", "main", "parser", "standalone_conflist"]

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


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to(path.anchor) if path.is_absolute() else root / path


def install(
    bin_dir: Path,
    conf_dir: Path,
    mode: str,
    socket: str,
    python: str,
    *,
    bundle_dir: Path | None = None,
    host_root: Path = Path("/"),
) -> Path:
    """Write the executable and the conflist; returns the conflist's path (under ``host_root``)."""
    bin_dir, conf_dir = _under(host_root, bin_dir), _under(host_root, conf_dir)
    exe = bin_dir / PLUGIN
    if bundle_dir is None:
        script = f'#!/bin/sh\nexec {python} -m cni "$@"\n'
    else:
        from cni import bundle

        previous = bundle.launcher_bundle(exe.read_text()) if exe.is_file() else None
        built = bundle.build(_under(host_root, bundle_dir))
        script = bundle.launcher(built, bundle_dir / built.name)
    _write(exe, script, 0o755)
    if bundle_dir is not None:
        # Keep the bundle a plugin started before this upgrade may still be running.
        bundle.prune(built.parent, {built.name, Path(previous or built.name).name})
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodemesh-cni install", description=__doc__.split("\n\n")[0])
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--mode", choices=("chained", "standalone"), default="standalone")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the datapath's endpoint socket")
    p.add_argument("--python", default=sys.executable, help="interpreter the wrapper execs (no bundle)")
    p.add_argument(
        "--bundle-dir", default="", help="host directory for a self-contained copy of the plugin (cni.bundle)"
    )
    p.add_argument("--host-root", default="/", help="where the host's directories are mounted")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    out = install(
        Path(a.cni_bin_dir),
        Path(a.cni_conf_dir),
        a.mode,
        a.socket,
        a.python,
        bundle_dir=Path(a.bundle_dir) if a.bundle_dir else None,
        host_root=Path(a.host_root),
    )
    print(f"installed {Path(a.cni_bin_dir) / PLUGIN} and {out}")
    return 0
