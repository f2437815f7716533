"""The authd ↔ authd handshake, both ends (blocking; run in a thread pool).

Protocol (nothing but TLS 1.3 records ever crosses the wire):

1. The initiator connects from its node address to the responder's node address and starts TLS 1.3
   with SNI ``<remote-id>.<trust-domain>``, presenting the SVID of its local identity.
2. The responder's SNI callback switches to the context of that identity if it hosts it, else
   refuses (``unrecognized_name``). Both sides' OpenSSL verifies the peer chain and validity window
   against the trust bundle.
3. Each side checks the peer leaf (:func:`services.authd.spiffe.check_leaf`); the responder also checks
   that the initiator's identity has an endpoint on the node the connection comes from.
4. Acceptance is a TLS ``close_notify``. The responder, having accepted, sends one and waits for
   the initiator's; the initiator waits for the responder's (a clean ``close_notify``, not an alert,
   not a bare EOF or reset), then answers with its own. A side that refuses closes the TCP
   connection without one. In TLS 1.3 the client finishes its handshake before the server has
   checked the client certificate, so without this confirmation the initiator could not tell a
   refusal from an acceptance (Cilium's initiator cannot). The initiator reads the confirmation
   with ``recv`` rather than ``unwrap``: OpenSSL's ``SSL_shutdown`` treats a fatal alert from the
   peer as a completed shutdown, which would turn a refusal into a success.

The verdict expires at the earlier NotAfter of the two leaves.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

from services.authd.spiffe import AuthFailure, LeafInfo, check_leaf, reason_from_ssl_error

__all__ = ["InitiatorResult", "ResponderResult", "initiate", "respond", "sni_state"]

#: Per handshake-thread note the SNI callback leaves for :func:`respond` (what was asked, what failed).
sni_state = threading.local()


class InitiatorResult:
    __slots__ = ("expires", "peer")

    def __init__(self, peer: LeafInfo, expires: float) -> None:
        self.peer = peer
        self.expires = expires


class ResponderResult:
    __slots__ = ("expires", "local_identity", "peer", "peer_node")

    def __init__(self, local_identity: int, peer: LeafInfo, peer_node: str, expires: float) -> None:
        self.local_identity = local_identity
        self.peer = peer
        self.peer_node = peer_node
        self.expires = expires


def _abort(sock: socket.socket) -> None:
    """Close without close_notify (and with a RST), so the peer reads a refusal."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def initiate(
    ctx: ssl.SSLContext,
    *,
    host: str,
    port: int,
    source: str,
    server_name: str,
    trust_domain: str,
    expected_remote: int,
    local_not_after: float,
    timeout: float,
) -> InitiatorResult:
    """Run the initiator side; raises :class:`AuthFailure` with the reason on any failure."""
    try:
        raw = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
    except OSError as e:
        raise AuthFailure("connect", f"{host}:{port}: {e}") from e
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls: ssl.SSLSocket | None = None
    try:
        tls = ctx.wrap_socket(
            raw, server_hostname=server_name, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        tls.settimeout(timeout)
        tls.do_handshake()
        peer = check_leaf(tls.getpeercert(binary_form=True), trust_domain, expected_remote, time.time())
        # The responder's acceptance: a clean close_notify reads as b"" (an alert, a bare EOF or a
        # reset raise; any data is a protocol violation).
        if tls.recv(1) != b"":
            raise AuthFailure("protocol", "responder sent data")
        tls.unwrap()  # our close_notify: we accept too
        tls = None
        raw.close()
        return InitiatorResult(peer, min(peer.not_after, local_not_after))
    except AuthFailure:
        _abort(tls or raw)
        raise
    except (OSError, ValueError) as e:
        _abort(tls or raw)
        raise reason_from_ssl_error(e) from e


def respond(
    conn: socket.socket,
    ctx: ssl.SSLContext,
    *,
    trust_domain: str,
    identity_of: Callable[[ssl.SSLContext], tuple[int, float] | None],
    check_initiator: Callable[[LeafInfo, str], str],
    timeout: float,
) -> ResponderResult:
    """Run the responder side on an accepted connection.

    ``identity_of(ctx)`` gives (hosted identity, our leaf's NotAfter) for the context the SNI
    callback selected; ``check_initiator(leaf, source_ip)`` returns the initiator's node or raises
    :class:`AuthFailure` (``unknown-node``, ``not-on-node``).
    """
    sni_state.asked = None
    sni_state.failure = None
    src_ip = conn.getpeername()[0]
    conn.settimeout(timeout)
    tls: ssl.SSLSocket | None = None
    try:
        tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
        hosted = identity_of(tls.context)
        if hosted is None:
            raise AuthFailure("not-hosted", f"no SVID for SNI {sni_state.asked!r}")
        local_identity, local_not_after = hosted
        peer = check_leaf(tls.getpeercert(binary_form=True), trust_domain, None, time.time())
        peer_node = check_initiator(peer, src_ip)
        tls.unwrap()  # our acceptance out, the initiator's acceptance in
        tls = None
        conn.close()
        return ResponderResult(local_identity, peer, peer_node, min(peer.not_after, local_not_after))
    except AuthFailure:
        _abort(tls or conn)
        raise
    except (OSError, ValueError) as e:
        _abort(tls or conn)
        failure = getattr(sni_state, "failure", None)
        if isinstance(failure, AuthFailure):
            raise failure from e
        raise reason_from_ssl_error(e) from e
