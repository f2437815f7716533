"""The shared service runtime against a real nats-server: health, readiness, micro, decode errors."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import pytest

from nodemesh.bus import RemoteError, connect
from nodemesh.codec import encode
from nodemesh.config import ServiceConfig, load_config
from nodemesh.errors import ConfigError
from nodemesh.runtime import RequestError, Service, run_service
from testkit.natsserver import NatsServer


class Echo(msgspec.Struct):
    text: str


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def test_service_ready_only_after_gate_and_serves_micro(nats_server: NatsServer) -> None:
    cfg = ServiceConfig(nats_url=nats_server.url, health_addr="127.0.0.1:0")
    holder: dict[str, Service] = {}
    stop = asyncio.Event()

    async def main(svc: Service) -> None:
        holder["svc"] = svc
        svc.gate("synced")

        async def echo(req: Echo, _: object) -> Echo:
            if req.text == "bad":
                raise RequestError(422, "bad text")
            return Echo(req.text.upper())

        await svc.endpoint("echo", "test.echo", Echo, echo)

    task = asyncio.create_task(run_service("test", cfg, main, install_signals=False, stop=stop))
    for _ in range(100):
        if "svc" in holder and holder["svc"].health_port:
            break
        await asyncio.sleep(0.05)
    svc = holder["svc"]
    status, body = await _get(svc.health_port, "/readyz")
    assert status == 503 and json.loads(body)["gates"] == {"synced": False}
    svc.gate("synced").set()
    status, _ = await _get(svc.health_port, "/readyz")
    assert status == 200

    client = await connect(nats_server.url, name="client", max_wait=5)
    assert await client.request("test.echo", Echo("hi"), Echo) == Echo("HI")
    with pytest.raises(RemoteError) as ei:
        await client.request("test.echo", Echo("bad"), Echo)
    assert ei.value.code == "422"
    # A corrupt request gets a 400, not a crash; the service keeps answering.
    reply = await client.nc.request("test.echo", b"\xc1\xff garbage", timeout=2)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400"
    ping = await client.nc.request("$SRV.PING.nodemesh-test", b"", timeout=2)
    assert json.loads(ping.data)["name"] == "nodemesh-test"
    assert await client.request("test.echo", Echo("ok"), Echo) == Echo("OK")
    status, metrics = await _get(svc.health_port, "/metrics")
    assert "nodemesh_service_ready 1.0" in metrics
    await client.nc.close()
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_not_ready_while_nats_down_and_recovers(nats_server: NatsServer) -> None:
    cfg = ServiceConfig(nats_url=nats_server.url)
    holder: dict[str, Service] = {}
    stop = asyncio.Event()

    async def main(svc: Service) -> None:
        holder["svc"] = svc

    task = asyncio.create_task(run_service("test", cfg, main, install_signals=False, stop=stop))
    for _ in range(100):
        if "svc" in holder and holder["svc"].ready:
            break
        await asyncio.sleep(0.05)
    svc = holder["svc"]
    assert svc.ready
    nats_server.stop()
    for _ in range(100):
        if not svc.ready:
            break
        await asyncio.sleep(0.05)
    assert not svc.ready
    nats_server.start()
    for _ in range(200):
        if svc.ready:
            break
        await asyncio.sleep(0.05)
    assert svc.ready
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


def test_config_rejects_unknown_and_reads_env() -> None:
    cfg = load_config(ServiceConfig, ["--node", "node-7"], env={"NODEMESH_LOG_LEVEL": "debug"})
    assert cfg.node == "node-7" and cfg.log_level == "debug"
    with pytest.raises(ConfigError, match="unknown arguments"):
        load_config(ServiceConfig, ["--no-such-flag", "1"], env={})
    with pytest.raises(ConfigError, match="invalid config"):
        load_config(ServiceConfig, ["--stream-replicas", "three"], env={})


async def test_bus_drops_corrupt_messages_and_counts_them(bus) -> None:  # type: ignore[no-untyped-def]
    got: list[Echo] = []

    async def handler(msg: Echo, _: object) -> None:
        got.append(msg)

    await bus.subscribe("t.x", Echo, handler)
    await bus.nc.publish("t.x", b"\x00\x01corrupt")
    await bus.nc.publish("t.x", encode(Echo("fine")))
    await bus.nc.flush()
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == [Echo("fine")]
