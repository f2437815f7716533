"""Corrupt messages, KV values and policies: authd neither crashes nor corrupts its state."""

from __future__ import annotations

import socket

from nodemesh import subjects
from nodemesh.bus import RemoteError
from nodemesh.messages.auth import AuthListReply, AuthListRequest, AuthRequired
from testkit.authd_cluster import Cluster, key, poll
from tests.authd.test_paths import CLIENT, INGRESS_AUTH, SERVER, _pods


async def test_garbage_everywhere_then_auth_still_works(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("broken", {"endpointSelector": "not a selector", "ingress": 7})
    await c.start_authd("node-1", proactive=False)
    await c.start_authd("node-2", proactive=False)
    # Corrupt bus messages and KV values.
    await c.bus.nc.publish(subjects.auth_required("node-2"), b"\xc1\xc1 not msgpack")
    await (await c.bus.kv("ipcache")).put("10-244-9-9", b"\x00garbage")
    await (await c.bus.kv("identities")).put("id.77", b"\x92\x01")
    reply = await c.bus.nc.request(subjects.auth_list("node-2"), b"\xff\xff", timeout=5)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400"
    # A signal for a node nobody knows fails with a reason and leaves no entry behind in a bad state.
    await poll(lambda: c.manager("node-2").store.get(SERVER), 30, "node-2's SVID")
    bogus = key(SERVER, CLIENT, "node-7")
    await c.bus.publish(subjects.auth_required("node-2"), AuthRequired(key=bogus))
    await poll(lambda: c.seen.failures("node-2", "unknown-node"), 30, "an unknown-node failure")
    # An oversized auth list filter is just a filter that matches nothing.
    listed = await c.bus.request(
        subjects.auth_list("node-2"), AuthListRequest(state="x" * 10000), AuthListReply
    )
    assert listed.entries == []
    # Still serving: a real signal gets a verdict (the valid policy arrives after the broken one).
    await c.put_policy("server-in", INGRESS_AUTH)
    await poll(lambda: c.manager("node-1").store.get(CLIENT), 30, "node-1's SVID")
    k = key(SERVER, CLIENT, "node-1")
    await c.bus.publish(subjects.auth_required("node-2"), AuthRequired(key=k))
    await poll(lambda: c.seen.grants("node-2", k), 30, "a verdict after all the garbage")
    assert c.services["node-2"].ready and c.services["node-1"].ready
    try:
        await c.bus.request(subjects.auth_list("node-1"), AuthListRequest(), AuthListReply)
    except RemoteError as e:  # pragma: no cover - the endpoint must answer
        raise AssertionError(e) from e


async def test_bounded_queue_counts_what_it_drops(cluster: Cluster) -> None:
    """One worker stuck on a peer that never answers, a queue of 2: of a burst of 10 distinct signals
    at most 3 are taken (1 in flight + 2 queued), the rest are dropped and counted; nothing blocks."""
    c = cluster
    mute = socket.socket()
    mute.bind(("127.0.50.3", 0))
    mute.listen(64)  # accepts TCP (kernel) but never speaks TLS
    try:
        await c.add_node("node-3", "127.0.50.3", mute.getsockname()[1])
        await c.add_identity(CLIENT, "client")
        await c.add_pod("10.244.1.10", CLIENT, "node-1")
        for i in range(10):
            await c.add_identity(2000 + i, f"peer{i}")
            await c.add_pod(f"10.244.3.{i + 1}", 2000 + i, "node-3")
        await c.start_authd("node-1", proactive=False, workers=1, queue_size=2, handshake_timeout=3.0)
        await poll(lambda: c.manager("node-1").store.get(CLIENT), 30, "node-1's SVID")
        for i in range(10):
            await c.bus.publish(
                subjects.auth_required("node-1"), AuthRequired(key=key(CLIENT, 2000 + i, "node-3"))
            )
        await c.bus.nc.flush()
        m = c.manager("node-1")
        # The loop may or may not have taken the first signal off the queue before the burst
        # filled it: 2 or 3 accepted, the rest dropped — every one counted, none lost silently.
        await poll(
            lambda: m.m.dropped._value.get() + m.m.signals.labels(outcome="queued")._value.get() == 10, 30
        )
        dropped = await c.metric("node-1", "nodemesh_auth_queue_dropped_total")
        queued = await c.metric("node-1", "nodemesh_auth_signals_total", outcome="queued")
        assert dropped in (7, 8) and queued == 10 - dropped
        assert await c.metric("node-1", "nodemesh_auth_signals_total", outcome="dropped") == dropped
        assert await c.metric("node-1", "nodemesh_auth_pending") == queued
        # the stuck handshake times out with a reason, and the queued ones run after it
        await poll(
            lambda: len(c.seen.failures("node-1", "timeout")) == queued,
            60,
            "every accepted attempt to time out",
        )
    finally:
        mute.close()
