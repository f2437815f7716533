"""Corrupt messages, KV values and policies: authd neither crashes nor corrupts its state."""

from __future__ import annotations

from nodemesh import subjects
from nodemesh.bus import RemoteError
from nodemesh.messages.auth import AuthListReply, AuthListRequest, AuthRequired
from tests.authd.harness import Cluster, key, poll
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
