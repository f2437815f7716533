"""The ADS server against a small Python client: nonces, ACK/NACK, parking, wildcard vs named, Delta diffs.

ACKs and NACKs are checked where other services see them: as ``XdsAck`` on ``xds.ack.<node>`` in a real
nats-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.messages.xds import XdsAck
from services.xds.cache import SnapshotCache
from services.xds.publish import AckRelay
from services.xds.server import AdsServer
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.xds.ads_client import AdsClient
from tests.xds.ads_resources import simple_snapshot


class Env:
    def __init__(self, cache: SnapshotCache, server: AdsServer, relay: AckRelay, acks: asyncio.Queue[XdsAck]):
        self.cache, self.server, self.relay, self.acks = cache, server, relay, acks

    async def next_ack(self, timeout: float = 10.0) -> XdsAck:
        return await asyncio.wait_for(self.acks.get(), timeout)


@pytest.fixture
async def env(bus: Bus) -> AsyncIterator[Env]:
    cache = SnapshotCache()
    relay = AckRelay(bus)
    server = AdsServer(cache, relay.hooks())
    await server.start("127.0.0.1:0")
    acks: asyncio.Queue[XdsAck] = asyncio.Queue()

    async def on_ack(msg: XdsAck, _: object) -> None:
        await acks.put(msg)

    sub = await bus.subscribe(subjects.xds_ack("*"), XdsAck, on_ack)
    await bus.nc.flush()
    try:
        yield Env(cache, server, relay, acks)
    finally:
        await sub.unsubscribe()
        await server.stop(0)


SNAP = simple_snapshot(8080, {"a": [9000], "b": [9001]}, {"/a": "a", "/b": "b"})


def names(resp: object) -> list[str]:
    out = []
    for r in resp.resources:  # type: ignore[attr-defined]
        any_ = r.resource if hasattr(r, "resource") else r
        out.append(any_.type_url.rsplit(".", 1)[-1])
    return out


async def test_sotw_wildcard_named_ack_and_no_push_for_identical_state(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(CLUSTER)
        cds = await c.recv()
        assert (
            cds.type_url == CLUSTER and len(cds.resources) == 2 and cds.version_info == SNAP.version(CLUSTER)
        )
        await c.ack(cds)
        ack = await env.next_ack()
        assert (ack.node, ack.type_url, ack.version, ack.ack) == (
            "node-1",
            CLUSTER,
            SNAP.version(CLUSTER),
            True,
        )
        await c.request(ENDPOINT, ["a"])  # named: only what is asked for
        eds = await c.recv()
        assert len(eds.resources) == 1 and int(eds.nonce) > int(cds.nonce)
        await c.ack(eds, ["a"])
        await env.next_ack()
        assert not env.cache.set_default(
            simple_snapshot(8080, {"a": [9000], "b": [9001]}, {"/a": "a", "/b": "b"})
        )
        await c.expect_silence()
        # Subscribing to one more name answers even though the version did not move.
        await c.request(ENDPOINT, ["a", "b"], version=eds.version_info, nonce=eds.nonce)
        eds2 = await c.recv()
        assert len(eds2.resources) == 2 and int(eds2.nonce) > int(eds.nonce)
        await c.ack(eds2, ["a", "b"])
        await env.next_ack()
        # A name dropped and asked for again (a cluster removed and re-added) is sent again.
        await c.request(ENDPOINT, ["a"], version=eds2.version_info, nonce=eds2.nonce)
        await c.expect_silence(0.2)
        assert env.acks.empty()  # a subscription change is not another ACK
        await c.request(ENDPOINT, ["a", "b"], version=eds2.version_info, nonce=eds2.nonce)
        again = await c.recv()
        assert len(again.resources) == 2
        await c.ack(again, ["a", "b"])
        await env.next_ack()
        eds2 = again
        # An endpoint change pushes EDS (after its ACK), nothing else.
        env.cache.set_default(
            SNAP.replace(
                ENDPOINT, upsert=[simple_snapshot(1, {"a": [9100]}).resources(ENDPOINT)["a"].message]
            )
        )
        eds3 = await c.recv()
        assert eds3.type_url == ENDPOINT and int(eds3.nonce) > int(eds2.nonce)
        await c.expect_silence()


async def test_sotw_nack_is_published_and_never_resent(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(LISTENER)
        lds = await c.recv()
        await c.nack(lds, "Error adding/updating listener(s) web: bad")
        nack = await env.next_ack()
        assert not nack.ack and nack.error.endswith("web: bad") and nack.version == SNAP.version(LISTENER)
        assert env.relay.tracker.state("node-1", LISTENER, "web").rejected is not None
        await c.expect_silence()  # parked: no loop
        env.cache.set_default(simple_snapshot(8080, {"a": [9000], "b": [9001]}, {"/a": "a", "/b": "b"}))
        await c.expect_silence()  # same content again: still parked
        env.cache.set_default(simple_snapshot(8081, {"a": [9000], "b": [9001]}, {"/a": "a", "/b": "b"}))
        fixed = await c.recv()
        assert fixed.type_url == LISTENER and fixed.version_info != lds.version_info
        await c.ack(fixed)
        assert (await env.next_ack()).ack
        assert env.relay.tracker.state("node-1", LISTENER, "web").rejected is None


async def test_sotw_stale_nonce_is_ignored(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(ROUTE, ["web-routes"])
        r1 = await c.recv()
        await c.ack(r1, ["web-routes"])
        await env.next_ack()
        env.cache.set_default(simple_snapshot(8080, {"a": [9000], "b": [9001]}, {"/": "a"}))
        r2 = await c.recv()
        assert int(r2.nonce) > int(r1.nonce)
        # A late NACK of the old nonce: ignored entirely (no XdsAck, no parking, no response).
        await c.nack(r1, "stale complaint", names=["web-routes"])
        await c.expect_silence()
        assert env.acks.empty()
        await c.ack(r2, ["web-routes"])
        ack = await env.next_ack()
        assert ack.ack and ack.version == r2.version_info
        assert env.relay.stale._value.get() == 1  # type: ignore[attr-defined]


async def test_delta_sends_only_changes_and_resumes_from_initial_versions(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "node-1", delta=True) as c:
        await c.delta_request(CLUSTER)  # legacy wildcard
        cds = await c.recv()
        assert sorted(r.name for r in cds.resources) == ["a", "b"]
        await c.delta_ack(cds)
        assert (await env.next_ack()).ack
        await c.delta_request(ENDPOINT, ["a", "b"])
        eds = await c.recv()
        assert len(eds.resources) == 2
        await c.delta_ack(eds)
        await env.next_ack()
        changed = SNAP.replace(
            ENDPOINT, upsert=[simple_snapshot(1, {"b": [9200]}).resources(ENDPOINT)["b"].message]
        )
        env.cache.set_default(changed)
        one = await c.recv()
        assert [r.name for r in one.resources] == ["b"] and not one.removed_resources
        await c.delta_ack(one)
        await env.next_ack()
        env.cache.set_default(changed.replace(CLUSTER, remove=["a"]))
        gone = await c.recv()
        assert gone.type_url == CLUSTER and list(gone.removed_resources) == ["a"] and not gone.resources
        await c.delta_nack(gone, "refused")
        nack = await env.next_ack()
        assert not nack.ack and nack.error == "refused"
        await c.expect_silence()
        known = {r.name: r.version for r in eds.resources}
    # Reconnect (as after an xds restart) with what the client holds: only the stale resource comes.
    async with AdsClient(env.server.port, "node-1", delta=True) as c2:
        await c2.delta_request(ENDPOINT, ["a", "b"], initial=known)
        resp = await c2.recv()
        assert [r.name for r in resp.resources] == ["b"]


async def test_a_restarted_envoy_has_applied_nothing(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(LISTENER)
        lds = await c.recv()
        await c.ack(lds)
        await env.next_ack()
    assert env.relay.tracker.state("node-1", LISTENER, "web").applied is not None
    # Reconnecting with the accepted version (an xds restart) keeps it; an empty one (Envoy restart) not.
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(LISTENER, version=lds.version_info)
        await c.expect_silence(0.2)
        assert env.relay.tracker.state("node-1", LISTENER, "web").applied is not None
    async with AdsClient(env.server.port, "node-1", delta=True) as c:
        await c.delta_request(LISTENER)
        await c.recv()
        assert env.relay.tracker.state("node-1", LISTENER, "web").applied is None


async def test_delta_makes_before_it_breaks(env: Env) -> None:
    """A route moved from cluster a to a new cluster b: b is added and the route updated before a goes."""
    before = simple_snapshot(8080, {"a": [9000]}, {"/": "a"})
    after = simple_snapshot(8080, {"b": [9001]}, {"/": "b"})
    env.cache.set_default(before)
    async with AdsClient(env.server.port, "node-1", delta=True) as c:
        await c.delta_request(CLUSTER)
        await c.delta_ack(await c.recv())
        await c.delta_request(ROUTE, ["web-routes"])
        await c.delta_ack(await c.recv())
        env.cache.set_default(after)
        seq = []
        for _ in range(3):
            r = await c.recv()
            seq.append((r.type_url, [x.name for x in r.resources], list(r.removed_resources)))
        assert seq == [(CLUSTER, ["b"], []), (ROUTE, ["web-routes"], []), (CLUSTER, [], ["a"])]


async def test_bad_requests_get_errors_not_crashes(env: Env) -> None:
    env.cache.set_default(SNAP)
    async with AdsClient(env.server.port, "") as c:  # no node id
        await c.request(CLUSTER)
        for _ in range(100):
            if c.error is not None:
                break
            await asyncio.sleep(0.05)
        assert isinstance(c.error, grpc.aio.AioRpcError)
        assert c.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with AdsClient(env.server.port, "node-2") as c:
        await c.request("type.googleapis.com/envoy.unknown.Thing")  # ignored, stream stays up
        await c.request(CLUSTER)
        assert (await c.recv()).type_url == CLUSTER


async def test_nothing_served_before_a_snapshot(env: Env) -> None:
    async with AdsClient(env.server.port, "node-1") as c:
        await c.request(CLUSTER)
        await c.expect_silence()
        env.cache.set_snapshot("node-1", SNAP)
        assert (await c.recv()).type_url == CLUSTER
