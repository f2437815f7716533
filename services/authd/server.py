"""The responder: authd's TLS 1.3 listener on ``<node address>:<auth_port>``.

A fixed set of responder threads (separate from the initiators' pool, so a node authenticating a
pair with itself can never starve its own responder) each accept and run the blocking handshake,
and hand results back to the manager on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time

from services.authd.handshake import ResponderResult, respond, sni_state
from services.authd.manager import AuthManager
from services.authd.spiffe import AuthFailure, identity_from_sni
from services.authd.svids import SvidStore

__all__ = ["AuthServer"]

log = logging.getLogger("nodemesh.authd.server")


class AuthServer:
    def __init__(self, manager: AuthManager, store: SvidStore, *, workers: int, timeout: float) -> None:
        self.manager = manager
        self.store = store
        self.timeout = timeout
        self.workers = workers
        self.sock: socket.socket | None = None
        self.port = 0
        store.sni_callback = self._sni

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        """Answer only for identities this node hosts, with that identity's SVID."""
        sni_state.asked = name
        ident = identity_from_sni(name, self.store.trust_domain)
        svid = self.store.wait_ready(ident, min(2.0, self.timeout / 2)) if ident is not None else None
        if svid is None or svid.server_ctx is None:
            sni_state.failure = AuthFailure("not-hosted", f"SNI {name!r} names no identity hosted here")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = svid.server_ctx
        return None

    def _identity_of(self, ctx: ssl.SSLContext) -> tuple[int, float] | None:
        svid = self.store.by_server_ctx(ctx)
        return None if svid is None else (svid.identity, svid.not_after)

    def listen(self, address: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        log.info("authd listening on %s:%d", address, self.port)

    async def serve(self) -> None:
        """``workers`` threads each accept and run the responder side directly (no hand-off between
        an accepting thread and a worker); results go back to the loop."""
        assert self.sock is not None
        sock = self.sock
        # Blocking accept (no timeout): the kernel wakes exactly one waiting thread per connection;
        # with a timeout Python polls, and every thread would wake for every connection.
        sock.settimeout(None)
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                try:
                    conn, addr = sock.accept()
                except OSError:
                    if stop.is_set():
                        return
                    time.sleep(0.05)  # EMFILE and friends: back off, keep serving
                    continue
                conn.settimeout(None)
                result = self._handle(conn)
                try:
                    loop.call_soon_threadsafe(self._report, addr[0], result)
                except RuntimeError:  # the loop is closed: we are shutting down
                    return

        threads = [
            threading.Thread(target=worker, name=f"authd-resp-{i}", daemon=True) for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes every thread blocked in accept()
            for t in threads:
                await loop.run_in_executor(None, t.join, 1.0)
            sock.close()

    def _handle(self, conn: socket.socket) -> tuple[ResponderResult | AuthFailure, float, int]:
        t0 = time.perf_counter()
        base = self.store.base_server_ctx
        if base is None:
            conn.close()
            return AuthFailure("no-bundle", "no trust bundle yet"), 0.0, 0
        try:
            res: ResponderResult | AuthFailure = respond(
                conn,
                base,
                trust_domain=self.store.trust_domain,
                identity_of=self._identity_of,
                check_initiator=self.manager.check_initiator,
                timeout=self.timeout,
            )
        except AuthFailure as f:
            res = f
        asked = identity_from_sni(getattr(sni_state, "asked", None), self.store.trust_domain) or 0
        return res, time.perf_counter() - t0, asked

    def _report(self, src_ip: str, result: tuple[ResponderResult | AuthFailure, float, int]) -> None:
        res, latency, asked = result
        if isinstance(res, AuthFailure):
            self.manager.on_responder_failure(res, asked, None, src_ip)
        else:
            self.manager.on_responder_success(res, latency)
