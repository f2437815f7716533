"""The echo backend's h2c port (``H2C_PORT``, 3001): HTTP/2 with prior knowledge, the same JSON echo.

Upstream echo-basic serves h2c on 3001 and answers 400 to anything that is not HTTP/2; this does the
same for prior-knowledge connections (what Envoy uses for an ``appProtocol: kubernetes.io/h2c``
backend). The ``Upgrade: h2c`` dance from HTTP/1.1 is not implemented (it also gets 400). Needs the
``h2`` package; without it the port is simply not opened.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

__all__ = ["serve_h2c"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _body(headers: list[tuple[str, str]], peer: str) -> dict[str, Any]:
    from echoserver.echo import canonical_header

    pseudo = {k: v for k, v in headers if k.startswith(":")}
    hdrs: dict[str, list[str]] = {}
    for k, v in headers:
        if not k.startswith(":"):
            hdrs.setdefault(canonical_header(k), []).append(v)
    print(f"Echoing back request made to {pseudo.get(':path', '')} to client ({peer})", flush=True)
    return {
        "path": pseudo.get(":path", ""),
        "host": pseudo.get(":authority", ""),
        "method": pseudo.get(":method", ""),
        "proto": "HTTP/2.0",
        "headers": hdrs,
        "httpPort": os.environ.get("H2C_PORT", "3001"),
        "namespace": os.environ.get("NAMESPACE", ""),
        "ingress": os.environ.get("INGRESS_NAME", ""),
        "service": os.environ.get("SERVICE_NAME", ""),
        "pod": os.environ.get("POD_NAME", ""),
    }


async def _conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    peer_t = writer.get_extra_info("peername")
    peer = f"{peer_t[0]}:{peer_t[1]}" if isinstance(peer_t, tuple) else ""
    try:
        first = await reader.readexactly(len(PREFACE))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    if first != PREFACE:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    pending: dict[int, list[tuple[str, str]]] = {}
    try:
        events = conn.receive_data(first)
        while True:
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    pending[ev.stream_id] = [(str(k), str(v)) for k, v in ev.headers]
                if isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id in pending:
                    body = json.dumps(_body(pending.pop(ev.stream_id), peer), indent=1).encode()
                    conn.send_headers(
                        ev.stream_id,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("x-content-type-options", "nosniff"),
                            ("content-length", str(len(body))),
                        ],
                    )
                    conn.send_data(ev.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
            events = conn.receive_data(data)
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


async def serve_h2c(bind: str) -> asyncio.Server:
    return await asyncio.start_server(_conn, bind, int(os.environ.get("H2C_PORT") or 3001))
