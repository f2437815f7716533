"""TLS 1.3 contexts for authd's handshakes, built from keys that exist only in memory.

Python's ``ssl`` loads a certificate and key only from a path. The key goes through an anonymous
memory file (``memfd_create``) opened by its ``/proc/self/fd`` path and closed at once, so it never
touches a filesystem. Every context is TLS 1.3 only, requires and verifies the peer certificate
against the trust bundle (chain and validity window, by OpenSSL), and disables hostname checks:
the SNI is a routing label (``<id>.<td>``), and the SPIFFE ID is checked on the leaf afterwards.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["client_context", "load_chain_from_memory", "server_context"]


def load_chain_from_memory(ctx: ssl.SSLContext, chain_pem: str, key_pem: bytes) -> None:
    fd = os.memfd_create("nm-authd-svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, chain_pem.encode() + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _base(purpose: ssl.Purpose, bundle_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    return ctx


def client_context(chain_pem: str, key_pem: bytes, bundle_pem: str) -> ssl.SSLContext:
    """The initiator's context: presents ``chain_pem`` and verifies the responder."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, bundle_pem)
    load_chain_from_memory(ctx, chain_pem, key_pem)
    return ctx


def server_context(
    bundle_pem: str,
    chain_pem: str | None = None,
    key_pem: bytes | None = None,
    sni_callback: Callable[[Any, str | None, ssl.SSLContext], int | None] | None = None,
) -> ssl.SSLContext:
    """A responder context: requires a client certificate; no session tickets (nothing is resumed,
    and the only messages after the handshake are the close_notify confirmations)."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH, bundle_pem)
    ctx.num_tickets = 0
    if chain_pem is not None and key_pem is not None:
        load_chain_from_memory(ctx, chain_pem, key_pem)
    if sni_callback is not None:
        ctx.sni_callback = sni_callback
    return ctx
