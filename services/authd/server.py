"""The responder: authd's TLS 1.3 listener on ``<node address>:<auth_port>``.

Accepts on the event loop, runs each blocking handshake in its own thread pool (separate from the
initiators', so a node authenticating a pair with itself can never starve its own responder), and
hands results back to the manager on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

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
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="authd-resp")
        self.sock: socket.socket | None = None
        self.port = 0
        store.sni_callback = self._sni

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        """Answer only for identities this node hosts, with that identity's SVID."""
        sni_state.asked = name
        ident = identity_from_sni(name, self.store.trust_domain)
        svid = self.store.get(ident) if ident is not None else None
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
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, addr = await loop.sock_accept(self.sock)
                conn.setblocking(True)
                fut = loop.run_in_executor(self.pool, functools.partial(self._handle, conn))
                fut.add_done_callback(functools.partial(self._done, addr[0]))
        finally:
            self.sock.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

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

    def _done(
        self, src_ip: str, fut: asyncio.Future[tuple[ResponderResult | AuthFailure, float, int]]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        res, latency, asked = fut.result()
        if isinstance(res, AuthFailure):
            self.manager.on_responder_failure(res, asked, None, src_ip)
        else:
            self.manager.on_responder_success(res, latency)
