"""The gRPC mode of the echo backend: ``gateway_api_conformance.echo_basic.grpcecho.GrpcEcho``.

The messages are declared at runtime with a FileDescriptorProto (no protoc, no generated code), with
upstream's field numbers (``conformance/echo-basic/grpcecho.proto``), so upstream's Go client and
ours decode the same bytes. ``TLS_SERVER_CERT`` + ``TLS_SERVER_PRIV_KEY`` (upstream's spelling; the
HTTP mode's ``TLS_SERVER_PRIVKEY`` is accepted too) add a TLS port on ``HTTPS_PORT`` (8443).
Python's gRPC server does not expose ``:authority`` or the TLS state, so ``authority`` and
``tls_assertions`` stay empty (upstream's tests do not compare them).
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["PACKAGE", "SERVICE", "messages", "serve_grpc"]

PACKAGE = "gateway_api_conformance.echo_basic.grpcecho"
SERVICE = f"{PACKAGE}.GrpcEcho"

_F = descriptor_pb2.FieldDescriptorProto
_CACHE: dict[str, Any] = {}


def _msg(
    fd: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple[str, int, int, str, bool]]
) -> None:
    m = fd.message_type.add(name=name)
    for fname, num, ftype, tname, repeated in fields:
        f = m.field.add(name=fname, number=num, type=ftype)  # type: ignore[arg-type,unused-ignore]
        f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
        if tname:
            f.type_name = f".{PACKAGE}.{tname}"


def messages() -> dict[str, Any]:
    """The message classes by name (EchoRequest, EchoResponse, Assertions, Header, Context, ...)."""
    if _CACHE:
        return _CACHE
    fd = descriptor_pb2.FileDescriptorProto(name="nodemesh/grpcecho.proto", package=PACKAGE, syntax="proto3")
    s, m = _F.TYPE_STRING, _F.TYPE_MESSAGE
    _msg(fd, "EchoRequest", [])
    _msg(fd, "Header", [("key", 1, s, "", False), ("value", 2, s, "", False)])
    _msg(
        fd,
        "Context",
        [
            ("namespace", 1, s, "", False),
            ("ingress", 2, s, "", False),
            ("service_name", 3, s, "", False),
            ("pod", 4, s, "", False),
        ],
    )
    _msg(
        fd,
        "TLSAssertions",
        [
            ("version", 1, s, "", False),
            ("peer_certificates", 2, s, "", True),
            ("server_name", 3, s, "", False),
            ("negotiated_protocol", 4, s, "", False),
            ("cipher_suite", 5, s, "", False),
        ],
    )
    _msg(
        fd,
        "Assertions",
        [
            ("fully_qualified_method", 1, s, "", False),
            ("headers", 2, m, "Header", True),
            ("authority", 3, s, "", False),
            ("context", 4, m, "Context", False),
            ("tls_assertions", 5, m, "TLSAssertions", False),
        ],
    )
    _msg(
        fd,
        "EchoResponse",
        [("assertions", 1, m, "Assertions", False), ("request", 2, m, "EchoRequest", False)],
    )
    svc = fd.service.add(name="GrpcEcho")
    for meth in ("Echo", "EchoTwo", "EchoThree"):
        svc.method.add(
            name=meth, input_type=f".{PACKAGE}.EchoRequest", output_type=f".{PACKAGE}.EchoResponse"
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    for name in ("EchoRequest", "EchoResponse", "Assertions", "Header", "Context", "TLSAssertions"):
        _CACHE[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
    return _CACHE


def _respond(method: str, request: Any, context: Any) -> Any:
    ms = messages()
    resp = ms["EchoResponse"]()
    a = resp.assertions
    a.fully_qualified_method = method
    for k, v in context.invocation_metadata() or ():
        a.headers.add(key=k, value=v if isinstance(v, str) else v.decode("latin-1"))
    a.context.namespace = os.environ.get("NAMESPACE", "")
    a.context.ingress = os.environ.get("INGRESS_NAME", "")
    a.context.service_name = os.environ.get("SERVICE_NAME", "")
    a.context.pod = os.environ.get("POD_NAME", "")
    return resp


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)
        if method not in (f"/{SERVICE}/Echo", f"/{SERVICE}/EchoTwo"):
            return None  # grpc answers UNIMPLEMENTED (EchoThree too, deliberately)
        ms = messages()

        async def unary(request: Any, context: Any) -> Any:
            return _respond(method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=ms["EchoRequest"].FromString,
            response_serializer=lambda r: r.SerializeToString(),
        )


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


async def serve_grpc(bind: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Handler(),))
    server.add_insecure_port(f"{bind}:{port}")
    cert = os.environ.get("TLS_SERVER_CERT")
    key = os.environ.get("TLS_SERVER_PRIV_KEY") or os.environ.get("TLS_SERVER_PRIVKEY")
    if cert and key:
        creds = grpc.ssl_server_credentials([(_read(key), _read(cert))])
        server.add_secure_port(f"{bind}:{int(os.environ.get('HTTPS_PORT') or 8443)}", creds)
    await server.start()
    return server
