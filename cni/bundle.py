"""A self-contained copy of the plugin for the node: ``nodemesh-cni install --bundle-dir``.

The container runtime runs CNI plugins on the host, in the host's mount namespace, where nodemesh's
Python is not. The install step (the datapath DaemonSet's init container, which runs the nodemesh
image) therefore copies everything the plugin executes into one host directory:

    <bundle-dir>/<content hash>/
        lib/            the dynamic loader, libc and every shared library the interpreter and the
                        extension modules below link (found with ldd), so the host's glibc and its
                        Python (if any) are never used
        bin/python3.x   the interpreter (the image's)
        lib/python3.x/  its standard library (without tests, tkinter, idle, the static libpython, …)
        site/           the packages the plugin imports: cni, nodemesh, msgspec, pyroute2, …

and ``/opt/cni/bin/nodemesh-cni`` becomes a ``/bin/sh`` launcher that runs that interpreter through
the bundled loader (``ld-linux… --library-path <bundle>/lib``) with ``PYTHONHOME`` and
``PYTHONPATH`` inside the bundle, ``-S -P`` (no site-packages of anyone else, not the working
directory) and ``LC_ALL=C`` (glibc reads no locale file of the host). The node needs only ``/bin/sh``
and a kernel; nothing of the host's userland is loaded (tests/cni/test_bundle.py reads
the running interpreter's ``/proc/self/maps`` and ``sys.path`` to show it).

A bundle is named by the hash of its content, built next to the others under a temporary name and
renamed into place, so a plugin invocation running while the DaemonSet is upgraded keeps its files;
the install keeps the bundle the previous launcher used and removes older ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["PLUGIN_MODULES", "build", "launcher", "launcher_bundle", "prune"]

PLUGIN_MODULES = ("cni.plugin", "cni.spec", "cni.client", "cni.netlink", "cni.__main__")
"""What the plugin imports when it runs (ADD, CHECK, DEL, VERSION); their packages are copied whole."""
_STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "dist-packages",
}
_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)$")


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_DISCOVER = """
import json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n not in before}))
"""


def _site_roots() -> dict[str, Path]:
    """Top-level name → file or package directory of every non-stdlib module the plugin imports
    (asked of a fresh interpreter, so only what importing the plugin loads counts)."""
    done = subprocess.run(
        [sys.executable, "-c", _DISCOVER, *PLUGIN_MODULES], capture_output=True, text=True, check=True
    )
    loaded: dict[str, str | None] = json.loads(done.stdout)
    std = _stdlib().resolve()
    roots: dict[str, Path] = {}
    for name in sorted(loaded, key=len):
        top = name.split(".")[0]
        f = loaded.get(top) if top in loaded else loaded[name]
        if f is None or top in roots:
            continue
        path = Path(f).resolve()
        if path.is_relative_to(std) and "-packages" not in path.parts:
            continue  # the standard library is copied whole
        roots[top] = path.parent if path.name == "__init__.py" else path
    return roots


def _ldd(path: Path) -> dict[str, Path]:
    """The shared libraries ``path`` needs, name → file (the loader under its own name)."""
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    out: dict[str, Path] = {}
    for line in done.stdout.splitlines():
        m = _LDD_LINE.match(line)
        if m:
            target = Path(m.group(2))
            out[m.group(1) or target.name] = target
    return out


def _ignore_stdlib(directory: str, names: list[str]) -> set[str]:
    # Optimised bytecode (-O, -OO) is never loaded: the launcher runs without -O.
    skip = {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
    if Path(directory).resolve() == _stdlib().resolve():
        skip |= {n for n in names if n in _STDLIB_SKIP or n.startswith("config-")}
    return skip


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build(bundle_dir: Path) -> Path:
    """Copy the interpreter, its libraries, the standard library and the plugin's packages into a new
    ``bundle_dir/<hash>`` (or reuse an identical one); returns that directory."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    tmp = bundle_dir / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    python = Path(os.path.realpath(sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (tmp / "bin").mkdir(parents=True)
    shutil.copy2(python, tmp / "bin" / version)
    shutil.copytree(_stdlib(), tmp / "lib" / version, ignore=_ignore_stdlib, symlinks=False)
    site = tmp / "site"
    site.mkdir()
    for top, path in sorted(_site_roots().items()):
        if path.is_dir():
            shutil.copytree(path, site / top, symlinks=False)
        else:
            shutil.copy2(path, site / path.name)
    libs: dict[str, Path] = {}
    for binary in [tmp / "bin" / version, *tmp.rglob("*.so"), *tmp.rglob("*.so.*")]:
        libs.update(_ldd(binary))
    for name, target in libs.items():
        shutil.copy2(target, tmp / "lib" / Path(name).name)
    final = bundle_dir / _digest(tmp)
    if final.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    return final


def _loader(bundle: Path) -> str:
    found = sorted(p.name for p in (bundle / "lib").glob("ld-linux*"))
    if not found:
        raise RuntimeError(f"{bundle}: no dynamic loader was bundled (ldd found none)")
    return found[0]


def launcher(bundle: Path, host_bundle: Path) -> str:
    """The ``/opt/cni/bin/nodemesh-cni`` script for ``bundle`` (built at ``bundle``, which the host
    sees as ``host_bundle``)."""
    version = next(p.name for p in (bundle / "bin").iterdir())
    b = str(host_bundle)
    return (
        "#!/bin/sh\n"
        "# nodemesh-cni: written by `nodemesh-cni install --bundle-dir`; runs the bundled interpreter\n"
        "# through the bundled loader and libraries (nothing of the host's userland but /bin/sh).\n"
        f"B={b}\n"
        'export PYTHONHOME="$B" PYTHONPATH="$B/site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1\n'
        # The C locale is built into glibc: no host locale or gconv file is read (UTF-8 by Python's mode).
        "export LC_ALL=C PYTHONUTF8=1\n"
        f'exec "$B/lib/{_loader(bundle)}" --library-path "$B/lib" "$B/bin/{version}" -S -P -m cni "$@"\n'
    )


def launcher_bundle(script: str) -> str | None:
    """The bundle directory (host path) a launcher written by :func:`launcher` runs, if it is one."""
    m = re.search(r"^B=(\S+)$", script, re.M)
    return m.group(1) if m else None


def prune(bundle_dir: Path, keep: set[str]) -> None:
    """Remove the bundles (and abandoned builds) under ``bundle_dir`` whose names are not in ``keep``."""
    for p in bundle_dir.iterdir():
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
