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


def client_context(trusted_pem: bytes, alpn: list[str] | None = None) -> ssl.SSLContext:
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
) -> Response:
    default = 443 if scheme == "https" else 80
    authority = address if port == default else f"{address}:{port}"
    url = f"{scheme}://{authority}{path}"
    try:
        if scheme == "https":
            sni = (tls or {}).get("server_name") or host or address
            ctx = client_context(trusted_pem, ["http/1.1"])
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
    method: str,
    host: str | None,
    path: str,
    headers: dict[str, str],
    tls: dict[str, Any] | None,
    trusted_pem: bytes,
    timeout: float,
) -> Response:
    """One HTTP/2 request over TLS (ALPN h2), as Go's client sends it when the test asks for HTTP/2."""
    import h2.connection
    import h2.events

    authority = address if port == 443 else f"{address}:{port}"
    url = f"https://{authority}{path}"
    sni = (tls or {}).get("server_name") or host or address
    try:
        ctx = client_context(trusted_pem, ["h2"])
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as sock:
                der = sock.getpeercert(binary_form=True)
                if not der or not verify_hostname(der, sni):
                    return Response(url=url, error=f"certificate does not match {sni}")
                if sock.selected_alpn_protocol() != "h2":
                    return Response(url=url, error="server did not negotiate h2")
                conn = h2.connection.H2Connection()
                conn.initiate_connection()
                hdrs = [
                    (":method", method),
                    (":path", path),
                    (":scheme", "https"),
                    (":authority", host or authority),
                ]
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
                return resp
    except (OSError, ssl.SSLError, ValueError) as e:
        return Response(url=url, error=f"{type(e).__name__}: {e}")


def http_request(
    address: str,
    port: int,
    req: dict[str, Any],
    trusted_pem: bytes = b"",
    timeout: float = 10.0,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    """Send one request item's ``request`` (fresh connection), following redirects as Go does."""
    scheme = req.get("scheme") or "http"
    method = req.get("method") or "GET"
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    sets = req.get("echo_set_response_headers") or {}
    headers["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in sets.items())
    headers.update(extra_headers or {})
    host, path = req.get("host"), req.get("path") or "/"
    if req.get("protocol") == "HTTP/2" and scheme == "https":
        return _one_h2(address, port, method, host, path, headers, req.get("tls"), trusted_pem, timeout)
    resp = _one(address, port, scheme, method, host, path, headers, req.get("tls"), trusted_pem, timeout)
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
