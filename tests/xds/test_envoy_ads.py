"""The ADS server driving a REAL Envoy (1.40): traffic, Delta diffs, NACKs, xds restarts, shared ports.

Each test starts Envoy with the bootstrap nodes use (``render_bootstrap``), serves hand-built
resources (listener → route → EDS cluster → endpoints) and sends real HTTP through Envoy to
backends on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conformance.envoy import envoy_binary
from nodemesh.bus import Bus
from services.xds.bootstrap import render_bootstrap
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot
from testkit.natsserver import free_port
from tests.xds.ads_resources import (
    cluster,
    endpoints,
    listener,
    route,
    self_signed,
    simple_snapshot,
    tls_listener,
    tls_secret,
)
from tests.xds.envoy_fixtures import Backends, Xds, eventually, http_get, serves

pytestmark = pytest.mark.envoy


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def xds(bus: Bus) -> AsyncIterator[Xds]:
    x = Xds(bus)
    await x.start()
    await x.subscribe_acks()
    try:
        yield x
    finally:
        await x.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_serves_traffic_and_endpoint_change_sends_only_that_resource(
    xds: Xds, backends: Backends, delta: bool
) -> None:
    a, b = await backends.add("blue"), await backends.add("green")
    await backends.add("other")
    lport = free_port()
    # 20 clusters loaded, so "only what changed" is visible in Delta.
    extra = {f"svc-{i}": [backends.ports["other"]] for i in range(20)}
    snap = simple_snapshot(
        lport, {"app": [a], **extra}, {"/": "app", **{f"/svc-{i}": f"svc-{i}" for i in range(20)}}
    )
    snap.consistent()
    xds.cache.set_default(snap)
    envoy = xds.envoy("node-1", delta=delta).start()
    try:
        await envoy.wait_live(60)
        url = f"http://127.0.0.1:{lport}/hello"
        await serves(url, "blue")
        await serves(f"http://127.0.0.1:{lport}/svc-7", "other")

        async def all_acked() -> bool:  # Envoy may serve a route a moment before its ACK arrives
            acked = {(e.sent.type_url, e.sent.version) for e in xds.events if e.ack}
            return {(t, snap.version(t)) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)} <= acked

        await eventually(all_acked, what="every type ACKed at the snapshot's version")
        mark = len(xds.sent)
        changed = snap.replace(ENDPOINT, upsert=[endpoints("app", [b])])
        xds.cache.set_default(changed)
        await serves(url, "green")

        async def acked_endpoints() -> bool:
            return any(e.ack and e.sent.version == changed.version(ENDPOINT) for e in xds.events)

        await eventually(acked_endpoints, what="EDS change ACKed")
        pushes = xds.sent[mark:]
        assert {s.type_url for s in pushes} == {ENDPOINT}
        if delta:
            assert [list(s.resources) for s in pushes] == [["app"]]
        else:
            assert len(pushes[0].resources) == 21  # SotW resends every subscribed assignment
    finally:
        envoy.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_nack_keeps_last_good_config_and_is_not_resent(
    xds: Xds, backends: Backends, delta: bool
) -> None:
    port = await backends.add("good")
    lport = free_port()
    snap = simple_snapshot(lport, {"app": [port]})
    xds.cache.set_default(snap)
    envoy = xds.envoy("node-1", delta=delta).start()
    try:
        await envoy.wait_live(60)
        url = f"http://127.0.0.1:{lport}/"
        await serves(url, "good")
        while not xds.acks.empty():
            xds.acks.get_nowait()
        bad = snap.replace(LISTENER, upsert=[listener("web", lport, "web-routes", address="not-an-ip")])
        xds.cache.set_default(bad)
        msg = await asyncio.wait_for(xds.acks.get(), 30)
        while msg.ack:
            msg = await asyncio.wait_for(xds.acks.get(), 30)
        assert msg.node == "node-1" and msg.type_url == LISTENER and msg.version == bad.version(LISTENER)
        assert "not-an-ip" in msg.error
        assert xds.relay is not None
        rejected = xds.relay.tracker.state("node-1", LISTENER, "web")
        assert rejected.rejected == bad.resources(LISTENER)["web"].version and "not-an-ip" in rejected.error
        sent_before = len(xds.sent_of(LISTENER))
        # Traffic stays on the last good listener while Envoy keeps rejecting nothing new.
        for _ in range(20):
            assert await http_get(url) == (200, "good")
            await asyncio.sleep(0.05)
        assert len(xds.sent_of(LISTENER)) == sent_before  # no resend loop
        late = [xds.acks.get_nowait() for _ in range(xds.acks.qsize())]
        assert [m for m in late if m.type_url == LISTENER] == []  # and so no second NACK
        # A fixed config goes out and is ACKed.
        fixed = snap.replace(ROUTE, upsert=[]).replace(
            LISTENER, upsert=[listener("web", lport, "web-routes", address="127.0.0.1")]
        )
        xds.cache.set_default(fixed.replace(ENDPOINT, upsert=[endpoints("app", [port, port])]))

        async def lds_ok() -> bool:
            state = xds.relay.tracker.state("node-1", LISTENER, "web")  # type: ignore[union-attr]
            return state.rejected is None

        await eventually(lds_ok, what="listener accepted again")
        assert await http_get(url) == (200, "good")
    finally:
        envoy.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_keeps_serving_through_xds_restart_and_reconnects(
    xds: Xds, backends: Backends, delta: bool
) -> None:
    p1, p2 = await backends.add("v1"), await backends.add("v2")
    lport = free_port()
    snap = simple_snapshot(lport, {"app": [p1]})
    xds.cache.set_default(snap)
    envoy = xds.envoy("node-1", delta=delta).start()
    try:
        await envoy.wait_live(60)
        url = f"http://127.0.0.1:{lport}/"
        await serves(url, "v1")
        await xds.stop()

        async def disconnected() -> bool:
            return (await envoy.stats("control_plane.connected_state")).get(
                "control_plane.connected_state"
            ) == 0

        await eventually(disconnected, what="Envoy sees xds gone")
        failures = 0
        for _ in range(30):  # xds is down: every request still served
            status, body = await http_get(url)
            failures += (status, body) != (200, "v1")
            await asyncio.sleep(0.02)
        mark = len(xds.sent)
        await xds.start()  # a new xds process (fresh streams), same content

        async def connected() -> bool:
            return (await envoy.stats("control_plane.connected_state")).get(
                "control_plane.connected_state"
            ) == 1

        await eventually(connected, what="Envoy reconnected")
        for _ in range(10):
            status, body = await http_get(url)
            failures += (status, body) != (200, "v1")
        assert failures == 0
        # Envoy resumes with the versions it holds (SotW version_info, Delta initial_resource_versions);
        # content versions are hashes, so a new xds process sees they are current and resends nothing.
        assert xds.sent[mark:] == []
        xds.cache.set_default(snap.replace(ENDPOINT, upsert=[endpoints("app", [p2])]))
        await serves(url, "v2")
    finally:
        envoy.stop()


async def test_envoy_per_node_envoys_share_the_gateway_address(xds: Xds, backends: Backends) -> None:
    """Two node Envoys bind the same gateway address:port (SO_REUSEPORT); either one serves it."""
    port = await backends.add("gw-backend")
    addr, lport = f"127.0.100.{100 + (free_port() % 100)}", free_port()
    xds.cache.set_default(simple_snapshot(lport, {"app": [port]}, address=addr))
    e1 = xds.envoy("node-1", delta=True).start()
    e2 = xds.envoy("node-2", delta=True).start()
    try:
        await e1.wait_live(60)
        await e2.wait_live(60)
        for e in (e1, e2):
            dump = await e.config_dump("dynamic_listeners")
            assert "active_state" in str(dump), f"{e.name} did not bind the listener: {dump}"
        url = f"http://{addr}:{lport}/"
        await serves(url, "gw-backend")

        async def both_acked() -> bool:
            return {e.sent.node for e in xds.events if e.ack and e.sent.type_url == LISTENER} == {
                "node-1",
                "node-2",
            }

        await eventually(both_acked, what="both nodes ACKed the listener")
        e1.stop()  # the other node's Envoy keeps the address served
        for _ in range(10):
            assert await http_get(url) == (200, "gw-backend")
    finally:
        e1.stop()
        e2.stop()


async def tls_get(port: int, host: str, ca_pem: bytes) -> tuple[str, bytes]:
    """HTTPS GET with SNI ``host``, trusting only ``ca_pem``; returns (body, server certificate DER)."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return raw.split(b"\r\n\r\n", 1)[1].decode(), der


async def test_envoy_terminates_tls_with_sds_secret_and_rotates_it(xds: Xds, backends: Backends) -> None:
    """The certificate and key reach Envoy only as an SDS Secret; rotating it pushes just that Secret."""
    port = await backends.add("secure")
    lport = free_port()
    host = "secure.example.com"
    crt1, key1 = self_signed(host)
    snap = Snapshot.of([
        tls_listener("https", lport, "r", "default/cert"), route("r", {"/": "app"}),
        cluster("app"), endpoints("app", [port]), tls_secret("default/cert", crt1, key1),
    ])  # fmt: skip
    snap.consistent()
    xds.cache.set_default(snap)
    envoy = xds.envoy("node-1", delta=True).start()
    try:
        await envoy.wait_live(60)

        async def served_with(ca: bytes) -> bool:
            try:
                body, _ = await tls_get(lport, host, ca)
            except ssl.SSLError:
                return False
            return body == "secure"

        await eventually(lambda: served_with(crt1), what="HTTPS with the first certificate")
        mark = len(xds.sent)
        crt2, key2 = self_signed(host)
        xds.cache.set_default(snap.replace(SECRET, upsert=[tls_secret("default/cert", crt2, key2)]))
        await eventually(lambda: served_with(crt2), what="HTTPS with the rotated certificate")
        assert [(s.type_url, list(s.resources)) for s in xds.sent[mark:]] == [(SECRET, ["default/cert"])]
        with pytest.raises(ssl.SSLError):
            await tls_get(lport, host, crt1)  # the old certificate is gone
    finally:
        envoy.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_bootstrap_is_valid_for_envoy(tmp_path: Path, delta: bool) -> None:
    boot = render_bootstrap(
        "node-1", "127.0.0.1", 18000, 0, delta=delta, access_log_path=str(tmp_path / "a.log")
    )
    assert boot["node"]["id"] == "node-1"
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps(boot))
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    for bad in (("", 1, 0), ("n", 0, 0), ("n", 1, 70000)):
        with pytest.raises(ValueError):
            render_bootstrap(bad[0], "127.0.0.1", bad[1], bad[2])


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_new_listener_takes_the_address_of_a_removed_one(
    xds: Xds, backends: Backends, delta: bool
) -> None:
    """A deleted Gateway's LB address handed to the next Gateway: one snapshot change removes the old
    listener and adds a new one (another name) on the same address; Envoy must accept it."""
    port = await backends.add("app")
    lport = free_port()
    snap = simple_snapshot(lport, {"app": [port]})
    xds.cache.set_default(snap)
    envoy = xds.envoy("node-1", delta=delta).start()
    try:
        await envoy.wait_live(60)
        url = f"http://127.0.0.1:{lport}/"
        await serves(url, "app")
        moved = snap.replace(LISTENER, upsert=[listener("web-next", lport, "web-routes")], remove=["web"])
        xds.cache.set_default(moved)

        async def accepted() -> bool:
            return any(
                e.sent.type_url == LISTENER and "web-next" in e.sent.resources and e.ack for e in xds.events
            )

        await eventually(accepted, what="the new listener ACKed")
        nacks = [e for e in xds.events if e.sent.type_url == LISTENER and not e.ack]
        assert nacks == [], [e.error for e in nacks]
        await serves(url, "app")
        assert xds.relay is not None
        assert xds.relay.tracker.state("node-1", LISTENER, "web-next").rejected is None
    finally:
        envoy.stop()
