"""Keep a service process from importing what it never uses.

nats-py imports aiohttp at import time only for its WebSocket transport (``ws://`` servers); our
services connect over TCP. aiohttp and what it pulls in cost ~11 MB of RSS per process and a good
part of its start-up. A service's entry point calls :func:`without_nats_websocket` before anything
imports nats; a process that already imported aiohttp (tests, the local supervisor) keeps it.
"""

from __future__ import annotations

import sys

__all__ = ["without_nats_websocket"]


def without_nats_websocket() -> None:
    # None in sys.modules makes `import aiohttp` raise ImportError, which nats-py handles by
    # leaving the WebSocket transport unavailable (connecting to a ws:// URL then says so).
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
