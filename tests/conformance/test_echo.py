"""The echo backend behaves like upstream echo-basic: JSON echo, set-header, mirror log, TLS, gRPC, TCP."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.cases import Generated
from conformance.client import GrpcResult, grpc_call, http_request, tls_exchange

GEN = Generated()


class Echo:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.ip = f"127.{random.randrange(101, 250)}.{random.randrange(0, 250)}.{random.randrange(2, 250)}"
        self.log = tmp / f"echo-{self.ip}.log"
        e = dict(
            os.environ,
            POD_NAME="infra-backend-v1-abc12-xyz89",
            NAMESPACE="infra",
            ECHO_BIND_ADDRESS=self.ip,
            PORT="3000",
            **env,
        )
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "echoserver.echo"], env=e, stdout=fh, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.ip, 3000), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"echo did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Echo]:
    e = Echo(tmp_path)
    yield e
    e.stop()


def test_http_echo_json(echo: Echo) -> None:
    resp = http_request(
        echo.ip,
        3000,
        {
            "path": "//v2?animal=whale",
            "host": "example.com:1234",
            "headers": {"x-header-set": "a", "Version": "one"},
        },
    )
    assert resp.status == 200
    assert resp.header("Content-Type") == ["application/json"]
    assert resp.header("X-Content-Type-Options") == ["nosniff"]
    body = resp.json()
    assert body is not None
    assert body["path"] == "//v2?animal=whale"  # the raw request-URI, query included
    assert body["host"] == "example.com:1234" and body["method"] == "GET" and body["proto"] == "HTTP/1.1"
    assert body["headers"]["X-Header-Set"] == ["a"] and body["headers"]["Version"] == ["one"]
    assert "Host" not in body["headers"]
    assert (body["namespace"], body["pod"], body["httpPort"]) == (
        "infra",
        "infra-backend-v1-abc12-xyz89",
        "3000",
    )
    assert "tls" not in body


def test_set_response_headers_and_mirror_log_line(echo: Echo) -> None:
    resp = http_request(
        echo.ip,
        3000,
        {"path": "/mirror?id=7", "echo_set_response_headers": {"X-Header-Set": "set", "x-lower": "v"}},
    )
    assert resp.header("X-Header-Set") == ["set"] and resp.header("x-lower") == ["v"]
    deadline = time.monotonic() + 10
    while "Echoing back request made to /mirror?id=7 to client (" not in echo.log.read_text():
        assert time.monotonic() < deadline, echo.log.read_text()
        time.sleep(0.05)


def test_health_and_status(echo: Echo) -> None:
    assert http_request(echo.ip, 3000, {"path": "/health"}).body == b"OK"
    resp = http_request(echo.ip, 3000, {"path": "/status/418"})
    assert resp.status == 418 and resp.body == b""


def test_https_reports_tls(tmp_path: Path) -> None:
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    pair = GEN.pair("infra", "tls-checks-certificate")
    crt.write_bytes(pair[0])
    key.write_bytes(pair[1])
    e = Echo(tmp_path, TLS_SERVER_CERT=str(crt), TLS_SERVER_PRIVKEY=str(key), HTTPS_PORT="8443")
    try:
        deadline = time.monotonic() + 20
        while True:
            resp = http_request(
                e.ip,
                8443,
                {
                    "scheme": "https",
                    "host": "abc.example.com",
                    "path": "/",
                    "tls": {"server_name": "abc.example.com"},
                },
                pair[0],
            )
            if resp.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        body = resp.json() or {}
        assert body["tls"]["serverName"] == "abc.example.com"
        assert body["tls"]["version"].startswith("TLSv1.")
    finally:
        e.stop()


def test_grpc_mode(tmp_path: Path) -> None:
    e = Echo(tmp_path, GRPC_ECHO_SERVER="1")
    try:
        svc = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
        res: GrpcResult = grpc_call(e.ip, 3000, {"rpc": f"{svc}/Echo", "metadata": {"X-Test": "1"}})
        assert res.code == "OK", res.error
        a = res.response["assertions"]
        assert a["fullyQualifiedMethod"] == f"{svc}/Echo"
        assert a["context"] == {"namespace": "infra", "pod": "infra-backend-v1-abc12-xyz89"}
        assert {"key": "x-test", "value": "1"} in a["headers"]
        assert grpc_call(e.ip, 3000, {"rpc": f"{svc}/EchoTwo"}).code == "OK"
        assert grpc_call(e.ip, 3000, {"rpc": f"{svc}/EchoThree"}).code == "UNIMPLEMENTED"
    finally:
        e.stop()


def test_tcp_mode_over_tls(tmp_path: Path) -> None:
    crt, key = tmp_path / "p.crt", tmp_path / "p.key"
    pair = GEN.pair(
        "infra", "tls-passthrough-checks-certificate", "signed by the CA; DNS SAN abc.example.com"
    )
    crt.write_bytes(pair[0])
    key.write_bytes(pair[1])
    e = Echo(
        tmp_path,
        TCP_ECHO_SERVER="1",
        TLS_SERVER_CERT=str(crt),
        TLS_SERVER_PRIVKEY=str(key),
        HTTPS_PORT="8443",
    )
    try:
        data = tls_exchange(e.ip, 8443, "abc.example.com", GEN.ca_pair[0])
        assert data["isTLS"] is True and data["tls"]["serverName"] == "abc.example.com"
        with socket.create_connection((e.ip, 3000), timeout=5) as s:
            f = s.makefile("rwb")
            assert f.readline() == b"Gateway API Test TCP Server\n"
            f.write(b"IS_TLS\n")
            f.flush()
            assert f.readline() == b"false\n"
    finally:
        e.stop()


def test_h2c_port_speaks_http2_prior_knowledge_only(echo: Echo) -> None:
    import h2.connection
    import h2.events

    with socket.create_connection((echo.ip, 3001), timeout=5) as s:
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":path", "/h2?x=1"),
                (":scheme", "http"),
                (":authority", "h2.example.com"),
                ("x-test", "1"),
            ],
            end_stream=True,
        )
        s.sendall(conn.data_to_send())
        status, body, done = "", b"", False
        while not done:
            data = s.recv(65536)
            assert data, "connection closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"].decode()
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
            s.sendall(conn.data_to_send())
    echoed = json.loads(body)
    assert status == "200" and echoed["proto"] == "HTTP/2.0" and echoed["path"] == "/h2?x=1"
    assert echoed["host"] == "h2.example.com" and echoed["headers"]["X-Test"] == ["1"]
    assert http_request(echo.ip, 3001, {"path": "/"}).status == 400
