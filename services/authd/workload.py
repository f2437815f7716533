"""The SPIFFE Workload API on a Unix socket, for workloads on this node (py-spiffe, go-spiffe, ...).

gRPC cannot tell a server who is on the other end of a Unix socket, so the public socket is a small
proxy: it accepts a connection, reads the caller's pid with ``SO_PEERCRED`` and attests it at once
(pid → ``/proc/<pid>/ns/net`` inode → the pod network namespace under ``netns_dir`` named ``nm-*``
with that inode → the pod's address in that namespace → ipcache → pod and identity, and the
namespace must be the one the datapath names for that pod), then relays the bytes
to the real ``grpc.aio`` server from a client socket bound to a fresh path in a private 0700
directory. The servicer maps ``context.peer()`` (that path) back to the attested identity. A caller
that is no pod of this node gets PermissionDenied; a pod gets only its own identity's SVID.
Workloads get a key of their own (purpose ``workload``), never the one authd handshakes with.

The gRPC side (:mod:`services.authd.workload_grpc`: grpc, protobuf, the SPIFFE protos, ~16 MB of
RSS and gRPC's threads) is loaded and started when the first workload connects, so a node whose
pods never use the Workload API does not carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import struct
from typing import Any

from nodemesh.netns import netns_name
from services.authd.manager import AuthManager
from services.authd.svids import Purpose, SvidStore

__all__ = ["Attestation", "WorkloadApi", "pod_addresses"]

log = logging.getLogger("nodemesh.authd.workload")


class Attestation:
    __slots__ = ("identity", "pid", "reason")

    def __init__(self, pid: int, identity: int | None, reason: str = "") -> None:
        self.pid = pid
        self.identity = identity
        self.reason = reason


def pod_addresses(pid: int) -> set[str]:
    """Local IPv4 addresses of the network namespace ``pid`` lives in (from its fib_trie, no setns)."""
    out: set[str] = set()
    try:
        with open(f"/proc/{pid}/net/fib_trie") as fh:
            last = ""
            for line in fh:
                s = line.strip()
                if s.startswith(("|--", "+--")):
                    last = s[3:].strip().split("/")[0]
                elif s.startswith("/32 host LOCAL") and last:
                    out.add(last)
    except OSError:
        pass
    return {a for a in out if not a.startswith("127.")}


class WorkloadApi:
    def __init__(
        self, store: SvidStore, manager: AuthManager, path: str, *, netns_dir: str = "/run/netns"
    ) -> None:
        self.store = store
        self.manager = manager
        self.path = path
        self.netns_dir = netns_dir
        self.private = os.path.join(os.path.dirname(path) or ".", f".workload-{os.getpid()}")
        self.internal = os.path.join(self.private, "grpc.sock")
        self.peers: dict[str, Attestation] = {}
        self._seq = itertools.count(1)
        self._changed = asyncio.Event()
        self._server: Any = None  # grpc.aio.Server, once a workload connected
        self._server_lock = asyncio.Lock()
        self._front: asyncio.AbstractServer | None = None
        store.listeners.append(self._on_svid)
        store.bundle_listeners.append(self._notify)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        os.makedirs(self.private, mode=0o700, exist_ok=True)
        os.chmod(self.private, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._front = await asyncio.start_unix_server(self._accept, self.path)
        os.chmod(self.path, 0o666)  # anyone may ask; attestation decides what they get
        log.info("Workload API on %s", self.path)

    async def _ensure_server(self) -> None:
        """Start the gRPC server behind the proxy (once, at the first connection)."""
        async with self._server_lock:
            if self._server is None:
                from services.authd.workload_grpc import serve

                self._server = await serve(self, self.internal)
                log.info("Workload API: gRPC server started")

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        if self._server is not None:
            await self._server.stop(0.5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        shutil.rmtree(self.private, ignore_errors=True)

    # --- attestation ---------------------------------------------------------------------------
    def attest(self, pid: int) -> Attestation:
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError as e:
            return Attestation(pid, None, f"cannot read network namespace of pid {pid}: {e}")
        netns = ""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.netns_dir):
                if name.startswith("nm-") and os.stat(os.path.join(self.netns_dir, name)).st_ino == inode:
                    netns = name
                    break
        if not netns:
            return Attestation(pid, None, f"pid {pid} is in no pod network namespace")
        ids = set()
        for ip in pod_addresses(pid):
            entry = self.manager.ip_index.get(ip)
            if entry is None or entry.node != self.manager.me or not entry.pod:
                continue
            # The namespace must be the one the datapath made for *this* pod, not merely one that
            # holds its address.
            if netns_name(self.manager.me, entry.namespace, entry.pod) != netns:
                return Attestation(pid, None, f"{netns} is not the network namespace of pod {entry.pod}")
            ids.add(entry.identity)
        if len(ids) != 1:
            return Attestation(pid, None, f"network namespace {netns} maps to {len(ids)} identities")
        return Attestation(pid, ids.pop())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        att = self.attest(pid)
        try:
            await self._ensure_server()
        except Exception:
            log.exception("Workload API: starting the gRPC server failed")
            writer.close()
            return
        bound = os.path.join(self.private, f"c{next(self._seq)}.sock")
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            inner.bind(bound)
            inner.setblocking(False)
            await asyncio.get_running_loop().sock_connect(inner, self.internal)
            self.peers[f"unix:{bound}"] = att
            ir, iw = await asyncio.open_unix_connection(sock=inner)
            await asyncio.gather(_pipe(reader, iw), _pipe(ir, writer), return_exceptions=True)
        finally:
            self.peers.pop(f"unix:{bound}", None)
            inner.close()
            writer.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bound)

    # --- what the gRPC servicer waits on ----------------------------------------------------------
    def changed(self) -> asyncio.Event:
        """Set at the next SVID or bundle change."""
        return self._changed

    def _on_svid(self, identity: int, purpose: Purpose, svid: object) -> None:
        self._notify()

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(Exception):
            dst.write_eof()
