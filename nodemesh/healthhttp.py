"""A minimal HTTP/1.1 server on asyncio streams for a service's ``/healthz``, ``/readyz``, ``/metrics``.

Three GET routes answered from memory do not need a web framework: importing aiohttp's server
costs every service ~15 MB of RSS and a third of its start-up imports. Requests are read up to the
end of their headers (bodies are not expected and not read); every response closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Handler", "HealthServer", "Response"]

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Response]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_MAX_HEAD = 16384


class HealthServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cleanup(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, ctype, body = self._route(head[:_MAX_HEAD])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception as e:  # a handler bug answers 500, never kills the server
            status, ctype, body = 500, "text/plain", f"{type(e).__name__}\n".encode()
        reason = _REASONS.get(status, "Internal Server Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, head: bytes) -> Response:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2:
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].decode("latin-1").split("?", 1)[0]
        handler = self.routes.get(target)
        if handler is None:
            return 404, "text/plain", b"not found\n"
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        status, ctype, body = handler()
        return status, ctype, b"" if method == b"HEAD" else body
