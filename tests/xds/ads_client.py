"""A tiny ADS client for protocol tests: send requests, read responses, ``ack()`` / ``nack(msg)``.

Modelled on go-control-plane's ``pkg/client/sotw/v3``; it speaks SotW (``delta=False``) or Delta.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc.status_pb2 import Status


class AdsClient:
    def __init__(
        self, port: int, node: str, *, delta: bool = False, creds: grpc.ChannelCredentials | None = None
    ) -> None:
        self.port = port
        self.creds = creds  # None: plaintext
        self.node = node
        self.delta = delta
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.received: list[Any] = []
        self._first = True
        self._channel: Any = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> AdsClient:
        target = f"127.0.0.1:{self.port}"
        self._channel = (
            grpc.aio.insecure_channel(target)
            if self.creds is None
            else grpc.aio.secure_channel(target, self.creds)
        )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        self._call = method(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
        await self._channel.close()

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            req = await self._out.get()
            if req is None:
                return
            yield req

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                self.received.append(resp)
                await self.responses.put(resp)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            self.error = e

    def _node(self) -> Node | None:
        if self._first:
            self._first = False
            return Node(id=self.node, cluster="test")
        return None

    # --- SotW -----------------------------------------------------------------------------------
    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
        node: bool = True,
    ) -> None:
        req = DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        n = self._node() if node else None
        if n is not None:
            req.node.CopyFrom(n)
        if error is not None:
            req.error_detail.CopyFrom(Status(code=3, message=error))
        await self._out.put(req)

    async def ack(self, resp: DiscoveryResponse, names: Iterable[str] = ()) -> None:
        await self.request(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)

    async def nack(
        self, resp: DiscoveryResponse, msg: str, *, version: str = "", names: Iterable[str] = ()
    ) -> None:
        await self.request(resp.type_url, names, version=version, nonce=resp.nonce, error=msg)

    # --- Delta ----------------------------------------------------------------------------------
    async def delta_request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        initial: dict[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        req = DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        n = self._node()
        if n is not None:
            req.node.CopyFrom(n)
        if error is not None:
            req.error_detail.CopyFrom(Status(code=3, message=error))
        await self._out.put(req)

    async def delta_ack(self, resp: DeltaDiscoveryResponse) -> None:
        await self.delta_request(resp.type_url, nonce=resp.nonce)

    async def delta_nack(self, resp: DeltaDiscoveryResponse, msg: str) -> None:
        await self.delta_request(resp.type_url, nonce=resp.nonce, error=msg)

    # --- reading ----------------------------------------------------------------------------------
    async def recv(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def expect_silence(self, seconds: float = 0.5) -> None:
        """Assert no response arrives within ``seconds`` (a quiet period, not a timing threshold)."""
        try:
            resp = await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: type={resp.type_url} nonce={resp.nonce}")
