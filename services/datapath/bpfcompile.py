"""Compile and load BPF C in a short-lived child process; the agent keeps only the loaded objects.

BCC links LLVM into the process that compiles, and those ~150 MB stay mapped for the life of the
process even after the programs are loaded. So the long-lived agent never imports ``bcc``: it runs
``python -m services.datapath.bpfcompile`` (this module; nothing here imports more than the
standard library and, in the child only, ``bcc``), which compiles, loads the programs — creating or
reusing the maps the C source pins (``BPF_TABLE_PINNED``) — and hands the program fds and the fds of
the requested unpinned maps (ring buffer, per-CPU counters) back over a Unix socket
(``SCM_RIGHTS``), then exits and LLVM with it. The agent works through those fds and the pins with
:mod:`services.datapath.bpfsys`. Nothing extra is pinned: program-private objects live as long as
the agent holds their fds, or a tc/cgroup attachment holds the program.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["CompileError", "Loaded", "ProgSpec", "compile_and_load"]

_MAX_FDS = 64


class CompileError(RuntimeError):
    """The compile step failed (the message carries the compiler's or loader's output)."""


@dataclass(frozen=True)
class ProgSpec:
    name: str
    prog_type: int
    attach_type: int = -1


@dataclass
class Loaded:
    """Fds the agent now owns: program fds by function name, map fds by map name."""

    progs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.progs.clear()
        self.maps.clear()


_LOCK_FILE = "nodemesh-bpf-load.lock"


@contextlib.contextmanager
def _load_lock() -> Iterator[None]:
    """A machine-wide lock (flock on a file in /run/lock, else the temp dir): released if we die."""
    d = "/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir()
    fd = os.open(os.path.join(d, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def compile_and_load(src: str, cflags: list[str], progs: list[ProgSpec], maps: list[str]) -> Loaded:
    """Compile ``src`` in a child process, load ``progs``, and return their fds and those of ``maps``."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        request = {
            "src": src,
            "cflags": cflags,
            "progs": [[p.name, p.prog_type, p.attach_type] for p in progs],
            "maps": maps,
            "fd": child.fileno(),
        }
        # One load at a time on the machine: BCC creates a pinned map when its pin is absent, so two
        # datapaths loading at once (the nodes of a local cluster share nm_proxy_flows/nm_proxy_active)
        # both find it absent and the second pin fails with EEXIST.
        with _load_lock():
            proc = subprocess.run(
                [sys.executable, "-m", "services.datapath.bpfcompile"],
                input=json.dumps(request).encode(),
                capture_output=True,
                pass_fds=[child.fileno()],
                check=False,
            )
        child.close()
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip()[-4000:]
            raise CompileError(f"compiling {src} failed (exit {proc.returncode}):\n{tail}")
        msg, fds, _flags, _addr = socket.recv_fds(parent, 1 << 16, _MAX_FDS)
    finally:
        parent.close()
        child.close()
    names = json.loads(msg)
    if len(fds) != len(names):
        for fd in fds:
            os.close(fd)
        raise CompileError(f"compiling {src}: expected {len(names)} fds, got {len(fds)}")
    out = Loaded()
    for (kind, name), fd in zip(names, fds, strict=True):
        (out.progs if kind == "prog" else out.maps)[name] = fd
    return out


def _child() -> int:
    """The compile step itself (only ever run in the child process)."""
    from bcc import BPF, lib  # the only place the datapath imports BCC

    req = json.loads(sys.stdin.buffer.read())
    sock = socket.socket(fileno=int(req["fd"]))
    b = BPF(src_file=req["src"].encode(), cflags=list(req["cflags"]))
    names: list[tuple[str, str]] = []
    fds: list[int] = []
    for name, prog_type, attach_type in req["progs"]:
        fds.append(b.load_func(name.encode(), prog_type, attach_type=attach_type).fd)
        names.append(("prog", name))
    for name in req["maps"]:
        fd = lib.bpf_table_fd(b.module, name.encode())
        if fd < 0:
            print(f"no map {name} in {req['src']}", file=sys.stderr)
            return 1
        fds.append(fd)
        names.append(("map", name))
    socket.send_fds(sock, [json.dumps(names).encode()], fds)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
