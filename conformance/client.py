"""The conformance client: HTTP/1.1 (+TLS with SNI), gRPC and raw TLS exchanges, as upstream sends them.

Every HTTP attempt opens a fresh connection (keep-alives off), has a 10 s timeout and carries
``X-Echo-Set-Header`` (README §3). Certificate checks follow Go's ``crypto/tls``: the chain must
verify against the one trusted root, and the SNI name must match a SAN (a wildcard covers exactly
one label).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from cryptography import x509

__all__ = ["GrpcResult", "Response", "grpc_call", "http_request", "tls_exchange"]

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    url: str = ""
    error: str = ""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def _host_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def verify_hostname(der: bytes, server_name: str) -> bool:
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return any(_host_matches(n, server_name) for n in sans.get_values_for_type(x509.DNSName))


def client_context(
    trusted_pem: bytes, alpn: list[str] | None = None, client_pair: tuple[bytes, bytes] | None = None
) -> ssl.SSLContext:
    """``client_pair`` (certificate PEM, key PEM): the certificate the client presents (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # checked below with Go's rules (OpenSSL refuses e.g. *.org)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with tempfile.NamedTemporaryFile(suffix=".pem") as fh:
        fh.write(trusted_pem)
        fh.flush()
        ctx.load_verify_locations(fh.name)
    # Trust the root even when it is a leaf-shaped self-signed certificate, as Go does.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if client_pair:
        with (
            tempfile.NamedTemporaryFile(suffix=".pem") as cf,
            tempfile.NamedTemporaryFile(suffix=".pem") as kf,
        ):
            cf.write(client_pair[0])
            kf.write(client_pair[1])
            cf.flush()
            kf.flush()
            ctx.load_cert_chain(cf.name, kf.name)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _one(
    address: str,
    port: int,
    scheme: str,
    method: str,
    host: str | None,
    path: str,
    headers: dict[str, str],
    tls: dict[str, Any] | None,
    trusted_pem: bytes,
    timeout: float,
    client_pair: tuple[bytes, bytes] | None = None,
) -> Response:
    default = 443 if scheme == "https" else 80
    authority = address if port == default else f"{address}:{port}"
    url = f"{scheme}://{authority}{path}"
    try:
        if scheme == "https":
            sni = (tls or {}).get("server_name") or host or address
            ctx = client_context(trusted_pem, ["http/1.1"], client_pair)
            raw = socket.create_connection((address, port), timeout=timeout)
            sock = ctx.wrap_socket(raw, server_hostname=sni)
            der = sock.getpeercert(binary_form=True)
            if not der or not verify_hostname(der, sni):
                sock.close()
                return Response(url=url, error=f"certificate does not match {sni}")
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(address, port, timeout=timeout)
            conn.sock = sock
        else:
            conn = http.client.HTTPConnection(address, port, timeout=timeout)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or authority)
        conn.putheader("User-Agent", "Go-http-client/1.1")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Connection", "close")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return Response(status=r.status, headers=list(r.getheaders()), body=body, url=url)
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        return Response(url=url, error=f"{type(e).__name__}: {e}")


def _one_h2(
    address: str,
    port: int,
    scheme: str,
    method: str,
    host: str | None,
    path: str,
    headers: dict[str, str],
    tls: dict[str, Any] | None,
    trusted_pem: bytes,
    timeout: float,
    client_pair: tuple[bytes, bytes] | None = None,
) -> Response:
    """One HTTP/2 request: over TLS (ALPN h2), as Go's client sends it when the test asks for HTTP/2,
    or for ``http`` in cleartext with prior knowledge (h2c, no ``Upgrade``)."""
    default = 443 if scheme == "https" else 80
    authority = address if port == default else f"{address}:{port}"
    url = f"{scheme}://{authority}{path}"
    sni = (tls or {}).get("server_name") or host or address
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            if scheme != "https":
                return _h2_exchange(raw, url, method, host or authority, path, headers, "http")
            ctx = client_context(trusted_pem, ["h2"], client_pair)
            with ctx.wrap_socket(raw, server_hostname=sni) as sock:
                der = sock.getpeercert(binary_form=True)
                if not der or not verify_hostname(der, sni):
                    return Response(url=url, error=f"certificate does not match {sni}")
                if sock.selected_alpn_protocol() != "h2":
                    return Response(url=url, error="server did not negotiate h2")
                return _h2_exchange(sock, url, method, host or authority, path, headers, "https")
    except (OSError, ssl.SSLError, ValueError) as e:
        return Response(url=url, error=f"{type(e).__name__}: {e}")


def _h2_exchange(
    sock: socket.socket,
    url: str,
    method: str,
    authority: str,
    path: str,
    headers: dict[str, str],
    scheme: str,
) -> Response:
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    hdrs = [(":method", method), (":path", path), (":scheme", scheme), (":authority", authority)]
    hdrs += [(k.lower(), v) for k, v in headers.items()]
    conn.send_headers(1, hdrs, end_stream=True)
    sock.sendall(conn.data_to_send())
    resp = Response(url=url)
    body = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                for rk, rv in ev.headers:
                    k = rk.decode() if isinstance(rk, bytes) else str(rk)
                    v = rv.decode() if isinstance(rv, bytes) else str(rv)
                    if k == ":status":
                        resp.status = int(v)
                    else:
                        resp.headers.append((k, v))
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                resp.body = body
                return resp
        sock.sendall(conn.data_to_send())
    resp.body = body
    if not resp.status:
        resp.error = "connection closed before a response"
    return resp


def _one_websocket(
    address: str, port: int, host: str | None, path: str, message: str, timeout: float
) -> Response:
    """An HTTP/1.1 WebSocket upgrade, then one text message; the echoed message becomes the body.

    The status is the handshake's (101 when the upgrade passed); a frame that does not come back is an
    error. Frames are written by hand (RFC 6455: masked client frames, payloads under 126 bytes).
    """
    import base64
    import os

    authority = address if port == 80 else f"{address}:{port}"
    url = f"ws://{authority}{path}"
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host or authority}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            f = sock.makefile("rb")
            status_line = f.readline().decode("latin-1").split()
            resp = Response(url=url, status=int(status_line[1]) if len(status_line) > 1 else 0)
            while (line := f.readline().decode("latin-1").rstrip("\r\n")) != "":
                name, _, value = line.partition(":")
                resp.headers.append((name.strip(), value.strip()))
            if resp.status != 101:
                return resp
            payload = message.encode()
            mask = os.urandom(4)
            frame = bytes([0x81, 0x80 | len(payload)]) + mask
            frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            sock.sendall(frame)
            head = f.read(2)
            if len(head) < 2 or head[0] & 0x0F != 1:
                resp.error = "no text frame came back"
                return resp
            resp.body = f.read(head[1] & 0x7F)
            return resp
    except (OSError, ValueError) as e:
        return Response(url=url, error=f"{type(e).__name__}: {e}")


def http_request(
    address: str,
    port: int,
    req: dict[str, Any],
    trusted_pem: bytes = b"",
    timeout: float = 10.0,
    extra_headers: dict[str, str] | None = None,
    client_pair: tuple[bytes, bytes] | None = None,
) -> Response:
    """Send one request item's ``request`` (fresh connection), following redirects as Go does.

    ``client_pair`` is the certificate and key presented over TLS (``tls.client_certificate``).
    """
    scheme = req.get("scheme") or "http"
    method = req.get("method") or "GET"
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    sets = req.get("echo_set_response_headers") or {}
    headers["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in sets.items())
    headers.update(extra_headers or {})
    host, path = req.get("host"), req.get("path") or "/"
    if req.get("websocket") is not None:
        return _one_websocket(address, port, host, path, str(req["websocket"]), timeout)
    tls = req.get("tls")
    if req.get("protocol") == "HTTP/2":
        return _one_h2(
            address, port, scheme, method, host, path, headers, tls, trusted_pem, timeout, client_pair
        )
    resp = _one(address, port, scheme, method, host, path, headers, tls, trusted_pem, timeout, client_pair)
    hops = 0
    while req.get("follow_redirects", True) and resp.status in _REDIRECTS and hops < 10:
        loc = resp.header("Location")
        if not loc:
            break
        nxt = urlsplit(urljoin(resp.url, loc[0]))
        # Only a redirect back to the same gateway can be followed here (no DNS for test hostnames).
        if nxt.hostname not in (address, host):
            break
        hops += 1
        if resp.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            method = "GET"
        npath = (nxt.path or "/") + (f"?{nxt.query}" if nxt.query else "")
        resp = _one(
            address,
            nxt.port or (443 if nxt.scheme == "https" else 80),
            nxt.scheme,
            method,
            host,
            npath,
            headers,
            req.get("tls"),
            trusted_pem,
            timeout,
            client_pair,
        )
    return resp


@dataclass
class GrpcResult:
    code: str = ""
    response: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def grpc_call(
    address: str,
    port: int,
    req: dict[str, Any],
    timeout: float = 10.0,
    extra_metadata: dict[str, str] | None = None,
) -> GrpcResult:
    """One unary RPC over h2c (a fresh channel), returning the status code name and the echo."""
    import grpc
    from google.protobuf import json_format

    from echoserver.echo_grpc import messages

    ms = messages()
    opts = []
    if req.get("authority"):
        opts.append(("grpc.default_authority", str(req["authority"])))
    md = [(str(k).lower(), str(v)) for k, v in (req.get("metadata") or {}).items()]
    md += [(k.lower(), v) for k, v in (extra_metadata or {}).items()]
    with grpc.insecure_channel(f"{address}:{port}", options=opts) as ch:
        call = ch.unary_unary(
            str(req.get("rpc")),
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ms["EchoResponse"].FromString,
        )
        try:
            resp = call(ms["EchoRequest"](), metadata=md or None, timeout=timeout)
        except grpc.RpcError as e:
            return GrpcResult(code=e.code().name, error=str(e.details()))
    return GrpcResult(code="OK", response=json_format.MessageToDict(resp))


def tls_exchange(
    address: str, port: int, server_name: str, trusted_pem: bytes, timeout: float = 10.0
) -> dict[str, Any]:
    """The tcp-backend line protocol over TLS: returns the TEST JSON (raises on any mismatch)."""
    ctx = client_context(trusted_pem)
    with socket.create_connection((address, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
            if not der or not verify_hostname(der, server_name):
                raise ssl.SSLError(f"certificate does not match {server_name}")
            f = s.makefile("rwb")

            def line() -> str:
                return f.readline().decode().rstrip("\n")

            def send(text: str) -> None:
                f.write(text.encode() + b"\n")
                f.flush()

            if line() != "Gateway API Test TCP Server":
                raise ValueError("bad welcome line")
            send("PING")
            if line() != "PONG":
                raise ValueError("PING did not answer PONG")
            send("IS_TLS")
            if line() != "true":
                raise ValueError("IS_TLS did not answer true")
            send("TEST")
            data: dict[str, Any] = json.loads(line())
            return data
