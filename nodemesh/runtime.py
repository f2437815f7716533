"""The lifecycle every nodemesh service shares.

``run_service(name, cfg, main)`` does, in order: structured logging; the health server
(``/healthz`` alive, ``/readyz`` ready, ``/metrics`` Prometheus); NATS connection (retried with
backoff; not-ready while disconnected); waiting until the admin step has provisioned every stream
and bucket (services have no right to create them); registration as a
NATS micro service (``$SRV.PING/INFO/STATS``); then ``await main(svc)``. ``main`` wires the
service: it subscribes, adds endpoints, spawns background tasks with :meth:`Service.spawn` and
opens readiness gates. The service is ready when NATS is connected and every gate is open — a
service opens its gate only after its initial sync. SIGTERM/SIGINT stop it: background tasks are
cancelled, cleanups run in reverse order, NATS is drained. A background task that fails stops the
service with exit code 1, so the supervisor (local mode) or Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nodemesh import __version__
from nodemesh.bus import Bus, connect
from nodemesh.codec import decode, encode
from nodemesh.config import ServiceConfig as BaseConfig
from nodemesh.errors import DecodeError
from nodemesh.healthhttp import HealthServer, Response
from nodemesh.log import setup_logging
from nodemesh.streams import wait_provisioned

__all__ = ["Gate", "RequestError", "Service", "run_service"]

# No ``*_created`` series next to every counter and histogram: Hubble (Go's client) exports none,
# and they double what every scrape stores. Process-wide, before any metric is made.
disable_created_metrics()  # type: ignore[no-untyped-call]

Q = TypeVar("Q")
log = logging.getLogger("nodemesh.runtime")


class RequestError(Exception):
    """Raise from an endpoint handler to answer with micro error headers (code, description)."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class Gate:
    """One readiness condition; the service is ready when every gate is open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = False
        self.event = asyncio.Event()

    def set(self) -> None:
        self.open = True
        self.event.set()

    def clear(self) -> None:
        self.open = False
        self.event.clear()


class Service:
    """What a service's ``main`` gets: the bus, config, metrics registry, readiness and tasks."""

    def __init__(self, name: str, cfg: BaseConfig, version: str = __version__) -> None:
        self.name = name
        self.cfg = cfg
        self.version = version
        self.registry = CollectorRegistry()
        self.log = logging.getLogger(f"nodemesh.{name}")
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.health_port = 0
        self._gates: dict[str, Gate] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._failure: BaseException | None = None
        self._bus: Bus | None = None
        self._micro: Any = None
        self._connected = False
        # Set once main() has wired everything (and so declared every readiness gate): before that,
        # no gate exists yet and readiness would be vacuously true.
        self._wired = False
        self._ready_gauge = Gauge(
            "nodemesh_service_ready", "1 when the service is ready", registry=self.registry
        )
        self._conn_gauge = Gauge(
            "nodemesh_nats_connected", "1 while connected to NATS", registry=self.registry
        )
        self._ready_gauge.set_function(lambda: 1.0 if self.ready else 0.0)
        self._conn_gauge.set_function(lambda: 1.0 if self._connected else 0.0)

    # --- wiring API for main() -------------------------------------------------------------
    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "bus is available once main() runs"
        return self._bus

    def gate(self, name: str) -> Gate:
        """A readiness gate (created closed)."""
        if name not in self._gates:
            self._gates[name] = Gate(name)
        return self._gates[name]

    @property
    def ready(self) -> bool:
        return self._wired and self._connected and all(g.open for g in self._gates.values())

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task for the service's lifetime; if it fails, the service stops."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Register a cleanup; cleanups run in reverse order after tasks are cancelled."""
        self._cleanups.append(fn)

    async def endpoint(
        self,
        name: str,
        subject: str,
        request_type: type[Q],
        handler: Callable[[Q, Request], Awaitable[Any]],
        *,
        queue_group: str | None = None,
    ) -> None:
        """A micro endpoint: the handler gets the decoded Struct and returns the reply Struct.

        Undecodable requests get a 400 with the decode error; :class:`RequestError` becomes its
        code; any other exception a 500 whose description is the exception's class (no traceback
        on the bus; it is logged).
        """

        async def wrapped(req: Request) -> None:
            try:
                value = decode(req.data, request_type, subject=subject)
            except DecodeError as e:
                await req.respond_error("400", str(e))
                return
            try:
                reply = await handler(value, req)
            except RequestError as e:
                await req.respond_error(str(e.code), e.description)
                return
            except Exception as e:
                self.log.exception("endpoint %s failed", name)
                await req.respond_error("500", f"internal error: {type(e).__name__}")
                return
            await req.respond(encode(reply))

        await self._micro.add_endpoint(
            EndpointConfig(name=name, subject=subject, handler=wrapped, queue_group=queue_group or "q")
        )

    # --- internals ---------------------------------------------------------------------------
    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self.stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self._failure = exc
            self.stopping.set()

    def _set_connected(self, up: bool) -> None:
        if up != self._connected:
            self.log.info("nats %s", "connected" if up else "disconnected")
        self._connected = up

    async def _health_app(self) -> HealthServer:
        def json_response(body: dict[str, Any], status: int = 200) -> Response:
            return status, "application/json", json.dumps(body).encode()

        def healthz() -> Response:
            return json_response({"status": "ok", "service": self.name})

        def readyz() -> Response:
            body = {
                "service": self.name,
                "ready": self.ready,
                "wired": self._wired,
                "nats": self._connected,
                "gates": {n: g.open for n, g in self._gates.items()},
                "version": self.version,
            }
            return json_response(body, status=200 if self.ready else 503)

        def metrics() -> Response:
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

        server = HealthServer({"/healthz": healthz, "/readyz": readyz, "/metrics": metrics})
        host, _, port = self.cfg.health_addr.rpartition(":")
        await server.start(host or "127.0.0.1", int(port or 0))
        self.health_port = server.port
        return server


async def run_service(
    name: str,
    cfg: BaseConfig,
    main: Callable[[Service], Awaitable[None]],
    *,
    version: str = __version__,
    description: str = "",
    install_signals: bool = True,
    stop: asyncio.Event | None = None,
) -> int:
    """Run one service until SIGTERM/SIGINT (or ``stop``); returns the process exit code."""
    svc = Service(name, cfg, version)
    if stop is not None:
        svc.stopping = stop
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, svc.stopping.set)
    runner = await svc._health_app()
    svc.log.info("health on %s port %d", cfg.health_addr, svc.health_port)
    code = 0
    try:
        svc._bus = await connect(
            cfg.nats_url,
            name=f"{name}@{cfg.node}",
            user=cfg.nats_user,
            password=cfg.nats_password,
            registry=svc.registry,
            on_state=svc._set_connected,
        )
        # Streams and buckets are the admin step's (nodemesh/streams.py): a service only waits.
        await wait_provisioned(
            svc.bus.js,
            lambda gone: svc.log.warning(
                "waiting for streams %s (created by the admin step: `nodemesh up`, "
                "`nodemesh nats provision`)",
                ", ".join(gone),
            ),
        )
        svc._micro = await add_service(
            svc.bus.nc,
            ServiceConfig(
                name=f"nodemesh-{name}",
                version=version,
                description=description or f"nodemesh {name}",
                metadata={"node": cfg.node, "health_port": str(svc.health_port)},
            ),
        )
        await main(svc)
        svc._wired = True
        await svc.stopping.wait()
        if svc._failure is not None:
            code = 1
    except asyncio.CancelledError:
        pass
    except Exception:
        svc.log.exception("service failed")
        code = 1
    finally:
        svc.stopping.set()
        try:
            # Stop serving requests first: a stopping instance must not take its queue-group share
            # of requests it will never answer while its cleanups run.
            if svc._micro is not None:
                with contextlib.suppress(Exception):
                    await svc._micro.stop()
            for t in list(svc._tasks):
                t.cancel()
            if svc._tasks:
                await asyncio.wait(list(svc._tasks), timeout=5)
            for fn in reversed(svc._cleanups):
                try:
                    await asyncio.wait_for(fn(), timeout=5)
                except Exception:
                    svc.log.exception("cleanup failed")
            if svc._bus is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(svc.bus.nc.drain(), timeout=5)
        finally:
            # Whatever happened above (a drain that timed out, a stop cancelled midway), the
            # connection and its subscriptions go: nothing keeps receiving for a stopped service.
            if svc._bus is not None and not svc.bus.nc.is_closed:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(svc.bus.nc.close())
        await runner.cleanup()
        svc.log.info("stopped", extra={"exit_code": code})
    return code


def service_main(
    name: str,
    config_type: type[BaseConfig],
    main: Callable[[Any], Awaitable[None]],
    argv: list[str] | None = None,
    description: str = "",
) -> None:
    """Entry point body shared by every ``services/<name>/__main__.py``."""
    import sys

    from nodemesh.config import load_config
    from nodemesh.errors import ConfigError

    try:
        cfg = load_config(config_type, argv)
    except ConfigError as e:
        print(f"nodemesh-{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    setup_logging(name, cfg.node, cfg.log_level, cfg.log_format)
    raise SystemExit(asyncio.run(run_service(name, cfg, main, description=description)))
