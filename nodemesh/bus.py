"""The NATS adapter every service uses: typed publish/subscribe/request over msgspec Structs.

A malformed message never reaches a handler: it is logged, counted in
``nodemesh_bus_decode_errors_total`` and dropped. Connection loss is survived by nats-py's
reconnect loop (forever, with backoff); :attr:`Bus.connected` tracks it for readiness.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from nodemesh.codec import decode, encode
from nodemesh.errors import BusError, DecodeError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

__all__ = ["Bus", "RemoteError", "connect"]

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("nodemesh.bus")

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


class RemoteError(BusError):
    """A request answered with the micro error headers."""

    def __init__(self, subject: str, code: str, description: str) -> None:
        super().__init__(f"{subject}: {code} {description}")
        self.code = code
        self.description = description


class Bus:
    """A connected NATS client plus JetStream, with typed helpers."""

    def __init__(self, nc: Client, registry: CollectorRegistry | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self._registry = registry
        self._decode_errors_counter: Counter | None = None
        if registry is not None:  # a service: the metric is exported from the start
            self._decode_errors_counter = self._make_counter()

    def _make_counter(self) -> Counter:
        # imported here: a CLI run (no registry) need not load prometheus_client
        from prometheus_client import Counter

        return Counter(
            "nodemesh_bus_decode_errors",
            "Messages dropped because they did not decode into their Struct",
            ["subject"],
            registry=self._registry,
        )

    @property
    def _decode_errors(self) -> Counter:
        if self._decode_errors_counter is None:
            self._decode_errors_counter = self._make_counter()
        return self._decode_errors_counter

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def publish(self, subject: str, msg: Any, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, encode(msg), headers=headers)

    async def js_publish(self, subject: str, msg: Any, *, msg_id: str | None = None) -> int:
        """Publish into a stream; ``msg_id`` de-duplicates within the stream's window."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(subject, encode(msg), headers=headers)
        return int(ack.seq)

    def decode_or_count(self, msg: Msg, tp: type[T]) -> T | None:
        try:
            return decode(msg.data, tp, subject=msg.subject)
        except DecodeError as e:
            self._decode_errors.labels(subject=msg.subject.split(".")[0]).inc()
            log.warning("dropping undecodable message", extra={"subject": msg.subject, "error": str(e)})
            return None

    async def subscribe(
        self,
        subject: str,
        tp: type[T],
        handler: Callable[[T, Msg], Awaitable[None]],
        *,
        queue: str = "",
    ) -> Subscription:
        """Subscribe with a typed handler; a handler exception is logged, never kills the subscription."""

        async def cb(msg: Msg) -> None:
            value = self.decode_or_count(msg, tp)
            if value is None:
                return
            try:
                await handler(value, msg)
            except Exception:
                log.exception("handler failed", extra={"subject": msg.subject})

        return await self.nc.subscribe(subject, queue=queue, cb=cb)

    async def request(self, subject: str, msg: Any, reply_type: type[R], *, timeout: float = 5.0) -> R:
        try:
            reply = await self.nc.request(subject, encode(msg), timeout=timeout)
        except NoRespondersError as e:
            raise BusError(f"no responders on {subject}") from e
        except (TimeoutError, NatsTimeout) as e:
            raise BusError(f"request on {subject} timed out after {timeout}s") from e
        if reply.headers and ERROR_HEADER in reply.headers:
            raise RemoteError(
                subject, reply.headers.get(ERROR_CODE_HEADER, "500"), reply.headers[ERROR_HEADER]
            )
        return decode(reply.data, reply_type, subject=subject)

    async def kv(self, bucket: str) -> KeyValue:
        return await self.js.key_value(bucket)


async def connect(
    servers: str,
    *,
    name: str,
    user: str = "",
    password: str = "",
    registry: CollectorRegistry | None = None,
    on_state: Callable[[bool], None] | None = None,
    connect_timeout: float = 2.0,
    max_wait: float | None = None,
    tls: ssl.SSLContext | None = None,
    user_credentials: str = "",
) -> Bus:
    """Connect, retrying with backoff until NATS answers (or ``max_wait`` seconds pass).

    ``tls``: verify the server with this context; ``user_credentials``: a NATS ``.creds`` file (JWT
    and seed, decentralized auth) instead of ``user``/``password``."""

    async def disconnected() -> None:
        if on_state:
            on_state(False)

    async def reconnected() -> None:
        if on_state:
            on_state(True)

    async def error_cb(e: Exception) -> None:
        log.debug("nats error: %s", e)

    loop = asyncio.get_running_loop()
    deadline = None if max_wait is None else loop.time() + max_wait
    delay = 0.1
    while True:
        try:
            nc = await nats.connect(
                servers=[s.strip() for s in servers.split(",") if s.strip()],
                name=name,
                user=user or None,
                password=password or None,
                tls=tls,
                user_credentials=user_credentials or None,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error_cb,
            )
            break
        except Exception as e:
            if deadline is not None and loop.time() + delay > deadline:
                raise BusError(f"cannot connect to NATS at {servers}: {e}") from e
            log.warning("NATS not reachable, retrying in %.1fs: %s", delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    if on_state:
        on_state(True)
    return Bus(nc, registry)
