"""An echo backend compatible with the Gateway API conformance suite's ``echo-basic`` server.

``python -m echoserver.echo`` behaves like the upstream image (see the conformance README §6):

- HTTP mode (default): HTTP/1.1 on ``HTTP_PORT``/``PORT`` (3000); HTTPS on ``HTTPS_PORT`` (8443)
  when ``TLS_SERVER_CERT`` and ``TLS_SERVER_PRIVKEY`` name PEM files. Every request except
  ``/health`` and ``/status/NNN`` is answered 200 with the JSON echo (raw request-URI, Host, method,
  proto, headers in Go's canonical form, ``POD_NAME``/``NAMESPACE``/``INGRESS_NAME``/``SERVICE_NAME``,
  TLS details); ``X-Echo-Set-Header: N:v,...`` sets response headers; each echo logs the line
  ``Echoing back request made to <URI> to client (<addr>)`` that the mirror checks look for.
  h2c (prior knowledge) on ``H2C_PORT`` (3001) with :mod:`echoserver.echo_h2c`. ``/ws`` upgraded to a
  WebSocket echoes every message. Not implemented: ``/retry``.
- gRPC mode (``GRPC_ECHO_SERVER=1``): service ``gateway_api_conformance.echo_basic.grpcecho.GrpcEcho``
  with ``Echo`` and ``EchoTwo`` (``EchoThree`` is UNIMPLEMENTED, as upstream). The messages are
  built at runtime (no protoc); see :mod:`echoserver.echo_grpc` for the field numbering.
- TCP mode (``TCP_ECHO_SERVER=1``): the line protocol (PING, IS_TLS, TEST) on 3000, and over TLS on
  8443 with the mounted certificate.

``ECHO_BIND_ADDRESS`` (a nodemesh extension, default ``0.0.0.0``) lets a harness run many echo
servers on distinct loopback addresses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import sys
import weakref
from typing import Any

from aiohttp import web

__all__ = ["canonical_header", "echo_body", "main", "parse_set_header", "serve"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SNI: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def canonical_header(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``x-header-set`` → ``X-Header-Set``."""
    if not _TOKEN.match(name):
        return name
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def parse_set_header(values: list[str]) -> list[tuple[str, str]]:
    """``X-Echo-Set-Header`` values → response headers (names keep their casing; repeats joined)."""
    out: dict[str, list[str]] = {}
    for v in values:
        for item in v.split(","):
            item = item.strip()
            if ":" not in item:
                continue
            name, val = item.split(":", 1)
            name, val = name.strip(), val.strip()
            if name:
                out.setdefault(name, []).append(val)
    return [(k, ",".join(v)) for k, v in out.items()]


def _env() -> dict[str, str]:
    return {
        "namespace": os.environ.get("NAMESPACE", ""),
        "ingress": os.environ.get("INGRESS_NAME", ""),
        "service": os.environ.get("SERVICE_NAME", ""),
        "pod": os.environ.get("POD_NAME", ""),
    }


def _tls_info(sslobj: Any) -> dict[str, Any] | None:
    if sslobj is None:
        return None
    cipher = sslobj.cipher()
    return {
        "version": sslobj.version() or "",
        "serverName": _SNI.get(sslobj, ""),
        "negotiatedProtocol": sslobj.selected_alpn_protocol() or "",
        "cipherSuite": cipher[0] if cipher else "",
        "peerCertificates": [],
    }


def echo_body(request: web.Request) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    for k, v in request.raw_headers:
        name = k.decode("latin-1")
        if name.lower() == "host":
            continue
        headers.setdefault(canonical_header(name), []).append(v.decode("latin-1"))
    body: dict[str, Any] = {
        "path": request.raw_path,
        "host": request.headers.get("Host", ""),
        "method": request.method,
        "proto": f"HTTP/{request.version.major}.{request.version.minor}",
        "headers": headers,
        "httpPort": os.environ.get("HTTP_PORT") or os.environ.get("PORT") or "3000",
        **_env(),
    }
    tls = _tls_info(request.transport.get_extra_info("ssl_object") if request.transport else None)
    if tls is not None:
        body["tls"] = tls
    return body


async def _websocket(request: web.Request) -> web.StreamResponse:
    """``/ws``: a WebSocket that echoes every message back (upstream's echo-basic has the same)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    print(f"Echoing back websocket made to {request.raw_path}", flush=True)
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _handle(request: web.Request) -> web.StreamResponse:
    path = re.sub("/+", "/", request.path)
    if path == "/health":
        return web.Response(text="OK")
    if path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
        return await _websocket(request)
    m = re.fullmatch(r"/status/(\d{3})", path)
    if m:
        # logged too (not as an echo): a retry test counts how many attempts reached the backend
        print(f"Answering {m.group(1)} to request made to {request.raw_path}", flush=True)
        return web.Response(status=int(m.group(1)))
    delay = request.query.get("delay")
    if delay:
        secs = _go_duration(delay)
        if secs:
            await asyncio.sleep(secs)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
    print(f"Echoing back request made to {request.raw_path} to client ({addr})", flush=True)
    resp = web.Response(
        body=json.dumps(echo_body(request), indent=1).encode(), headers={"X-Content-Type-Options": "nosniff"}
    )
    for k, v in parse_set_header(request.headers.getall("X-Echo-Set-Header", [])):
        resp.headers[k] = v
    resp.headers["Content-Type"] = "application/json"
    return resp


def _go_duration(text: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return min(total, 60.0)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)

    def remember_sni(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            _SNI[sslobj] = name

    ctx.sni_callback = remember_sni
    return ctx


async def _serve_http(bind: str) -> list[Any]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sites: list[Any] = [
        web.TCPSite(runner, bind, int(os.environ.get("HTTP_PORT") or os.environ.get("PORT") or 3000))
    ]
    cert, key = os.environ.get("TLS_SERVER_CERT"), os.environ.get("TLS_SERVER_PRIVKEY")
    if cert and key:
        sites.append(
            web.TCPSite(
                runner,
                bind,
                int(os.environ.get("HTTPS_PORT") or 8443),
                ssl_context=server_tls_context(cert, key),
            )
        )
    for s in sites:
        await s.start()
    from echoserver.echo_h2c import serve_h2c

    h2c = await serve_h2c(bind)
    return [runner, h2c]


async def _tcp_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool) -> None:
    try:
        writer.write(b"Gateway API Test TCP Server\n")
        await writer.drain()
        while line := await reader.readline():
            cmd = line.decode(errors="replace").strip()
            if cmd == "PING":
                writer.write(b"PONG\n")
            elif cmd == "IS_TLS":
                writer.write(b"true\n" if tls else b"false\n")
            elif cmd == "TEST":
                sslobj = writer.get_extra_info("ssl_object")
                info = _tls_info(sslobj) or {}
                body = {
                    **_env(),
                    "tcpport": os.environ.get("PORT", "3000"),
                    "tlsport": os.environ.get("HTTPS_PORT", "8443"),
                    "isTLS": tls,
                    "tls": {
                        k: info.get(k, "")
                        for k in ("version", "serverName", "negotiatedProtocol", "cipherSuite")
                    }
                    | {"curves": ""},
                }
                writer.write(json.dumps(body).encode() + b"\n")
            else:
                writer.write(b"unknown command\n")
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _serve_tcp(bind: str) -> list[Any]:
    servers = [
        await asyncio.start_server(
            lambda r, w: _tcp_conn(r, w, False), bind, int(os.environ.get("PORT") or 3000)
        )
    ]
    cert, key = os.environ.get("TLS_SERVER_CERT"), os.environ.get("TLS_SERVER_PRIVKEY")
    if cert and key:
        servers.append(
            await asyncio.start_server(
                lambda r, w: _tcp_conn(r, w, True),
                bind,
                int(os.environ.get("HTTPS_PORT") or 8443),
                ssl=server_tls_context(cert, key),
            )
        )
    return servers


async def serve() -> None:
    """Run in the mode the environment asks for, until SIGTERM/SIGINT."""
    bind = os.environ.get("ECHO_BIND_ADDRESS", "0.0.0.0")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("GRPC_ECHO_SERVER"):
        from echoserver.echo_grpc import serve_grpc

        server = await serve_grpc(bind, int(os.environ.get("PORT") or os.environ.get("HTTP_PORT") or 3000))
        print("gRPC echo server listening", flush=True)
        await stop.wait()
        await server.stop(0.5)
        return
    if os.environ.get("TCP_ECHO_SERVER"):
        servers = await _serve_tcp(bind)
        print("TCP echo server listening", flush=True)
        await stop.wait()
        for s in servers:
            s.close()
        return
    runners = await _serve_http(bind)
    print("HTTP echo server listening", flush=True)
    await stop.wait()
    for r in runners:
        if isinstance(r, asyncio.Server):
            r.close()
        else:
            await r.cleanup()


def main() -> None:
    try:
        asyncio.run(serve())
    except OSError as e:
        print(f"echo: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
