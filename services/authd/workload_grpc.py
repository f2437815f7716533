"""The gRPC half of the SPIFFE Workload API, behind :class:`~services.authd.workload.WorkloadApi`.

Imported, and its server started, only when the first workload connects to the API's socket (grpc
and the SPIFFE protos cost ~16 MB of RSS). The proxy in :mod:`services.authd.workload` attests each
caller and records the attestation under the inner connection's peer address; the servicer only
maps ``context.peer()`` back to it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from services.authd.svids import Svid

if TYPE_CHECKING:
    from services.authd.workload import WorkloadApi

__all__ = ["Servicer", "serve"]

log = logging.getLogger("nodemesh.authd.workload")
HEADER = ("workload.spiffe.io", "true")


async def serve(front: WorkloadApi, internal: str) -> grpc.aio.Server:
    """Start the gRPC server on the private socket ``internal`` the proxy relays to."""
    server = grpc.aio.server()
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(Servicer(front), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix:{internal}")
    await server.start()
    return server


class Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, front: WorkloadApi) -> None:
        self.front = front

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> int:
        md = {m.key: m.value for m in (context.invocation_metadata() or ())}
        if md.get(HEADER[0]) != HEADER[1]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        att = self.front.peers.get(context.peer())
        if att is None or att.identity is None:
            reason = att.reason if att else "unknown connection"
            log.info("Workload API: no identity for caller: %s", reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"no identity issued: {reason}")
        assert att is not None and att.identity is not None
        return att.identity

    async def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        identity = await self._caller(context)
        last: tuple[float, str] | None = None
        while True:
            changed = self.front.changed()
            if identity not in self.front.store.hosted:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, "identity no longer hosted on this node"
                )
            self.front.store.want_workload(identity)
            svid = self.front.store.get(identity, "workload")
            if (
                svid is not None
                and self.front.store.bundle_pem
                and (svid.not_after, self.front.store.bundle_pem) != last
            ):
                last = (svid.not_after, self.front.store.bundle_pem)
                yield workload_pb2.X509SVIDResponse(svids=[self._x509(svid)])
            await changed.wait()

    async def FetchX509Bundles(
        self, request: workload_pb2.X509BundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        await self._caller(context)
        last = ""
        while True:
            changed = self.front.changed()
            if self.front.store.bundle_pem and self.front.store.bundle_pem != last:
                last = self.front.store.bundle_pem
                yield workload_pb2.X509BundlesResponse(
                    bundles={self.front.store.trust_domain: self._bundle_der()}
                )
            await changed.wait()

    def _x509(self, svid: Svid) -> workload_pb2.X509SVID:
        return workload_pb2.X509SVID(
            spiffe_id=svid.leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)[0],
            x509_svid=svid.chain_der(),
            x509_svid_key=svid.key_der(),
            bundle=self._bundle_der(),
        )

    def _bundle_der(self) -> bytes:
        certs = x509.load_pem_x509_certificates(self.front.store.bundle_pem.encode())
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
