"""The proactive and reactive paths, end to end across two simulated nodes (verdicts on NATS)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from nodemesh import subjects
from nodemesh.messages.auth import AuthRequired
from testkit.authd_cluster import Cluster, dump, key, poll

CLIENT, SERVER, CLIENT2 = 1001, 1002, 1003

INGRESS_AUTH = {
    "endpointSelector": {"matchLabels": {"app": "server"}},
    "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "authentication": {"mode": "required"}}
    ],
}
BOTH_AUTH = {
    "endpointSelector": {"matchLabels": {"app": "server"}},
    "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "authentication": {"mode": "required"}}
    ],
}
EGRESS_AUTH = {
    "endpointSelector": {"matchLabels": {"app": "client"}},
    "egress": [{"toEndpoints": [{"matchLabels": {"app": "server"}}], "authentication": {"mode": "required"}}],
}


async def _pods(c: Cluster) -> None:
    await c.add_identity(CLIENT, "client")
    await c.add_identity(SERVER, "server")
    await c.add_pod("10.244.1.10", CLIENT, "node-1")
    await c.add_pod("10.244.2.10", SERVER, "node-2")


async def test_proactive_verdicts_before_any_traffic_and_for_a_new_pod(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("server-needs-auth", INGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    k = key(SERVER, CLIENT, "node-1")
    try:
        await poll(lambda: c.seen.grants("node-2", k), 20, "proactive verdict on node-2")
    except AssertionError:
        raise AssertionError(dump(c)) from None
    (_, verdict), *_ = c.seen.grants("node-2", k)
    assert verdict.expires > 0
    # Only node-2 checks auth (ingress rule); node-1 needs no entry for this policy.
    assert not [v for _, n, v in c.seen.granted if n == "node-1"]
    assert not c.seen.required, "no datapath signal was needed"
    ok = await c.metric("node-2", "nodemesh_auth_handshakes_total", role="initiator", result="ok", reason="")
    assert ok >= 1

    # A new pod of a new client identity appears on node-1: authenticated ahead of its first packet.
    await c.add_identity(CLIENT2, "client", extra=("k8s:version=v2",))
    await c.add_pod("10.244.1.11", CLIENT2, "node-1")
    k2 = key(SERVER, CLIENT2, "node-1")
    await poll(lambda: c.seen.grants("node-2", k2), 60, "proactive verdict for the new pod's identity")
    succeeded = [e for e in c.seen.of_type("node-2", "succeeded") if e.key == k2]
    assert succeeded and succeeded[0].proactive
    assert not c.seen.required

    # What a user sees: `nodemesh auth list`.
    rc, out, _ = await _cli(c, "auth", "list", "-o", "json")
    assert rc == 0
    rows = {(r["node"], r["key"]["local_identity"], r["key"]["remote_identity"]): r for r in json.loads(out)}
    row = rows[("node-2", SERVER, CLIENT2)]
    assert row["state"] == "authenticated" and row["proactive"] and row["key"]["remote_node"] == "node-1"
    assert row["expires"] > time.time() and row["auth_type_name"] == "spire"
    rc, out, _ = await _cli(c, "auth", "list", "--node", "node-2")
    assert rc == 0 and "authenticated" in out and "REMOTE NODE" in out
    rc, _, err = await _cli(c, "auth", "list", "--node", "node-9", "--timeout", "0.5")
    assert rc == 1 and "node-9" in err


async def _cli(c: Cluster, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshctl.main",
        *args,
        "--nats-url",
        c.nats_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_reactive_one_handshake_serves_both_nodes_and_dedupes(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("server-in", BOTH_AUTH)
    await c.put_policy("client-out", EGRESS_AUTH)
    await c.start_authd("node-1", proactive=False)
    await c.start_authd("node-2", proactive=False)
    k1 = key(CLIENT, SERVER, "node-2")  # node-1's egress check
    k2 = key(SERVER, CLIENT, "node-1")  # node-2's ingress check
    await asyncio.sleep(0.5)
    assert not c.seen.granted, "proactive is off: nothing before a signal"
    # Wait until both hold their SVIDs (a signal before that fails with no-svid and is retried by
    # the datapath's next drop, as in Cilium).
    await poll(
        lambda: c.manager("node-1").store.get(CLIENT) and c.manager("node-2").store.get(SERVER), 30, "SVIDs"
    )
    sig = AuthRequired(key=k1, remote_ip="10.244.2.10")
    for _ in range(20):  # a burst of drops of the same flow: one handshake
        await c.bus.publish(subjects.auth_required("node-1"), sig)
    await poll(lambda: c.seen.grants("node-1", k1), 30, "reactive verdict on node-1")
    await poll(lambda: c.seen.grants("node-2", k2), 30, "reverse verdict on node-2 from the same handshake")
    await asyncio.sleep(0.3)
    assert (
        await c.metric("node-1", "nodemesh_auth_handshakes_total", role="initiator", result="ok", reason="")
        == 1
    )
    assert (
        await c.metric("node-2", "nodemesh_auth_handshakes_total", role="responder", result="ok", reason="")
        == 1
    )
    assert (
        await c.metric("node-2", "nodemesh_auth_handshakes_total", role="initiator", result="ok", reason="")
        == 0
    )
    queued = await c.metric("node-1", "nodemesh_auth_signals_total", outcome="queued")
    absorbed = await c.metric("node-1", "nodemesh_auth_signals_total", outcome="deduped") + await c.metric(
        "node-1", "nodemesh_auth_signals_total", outcome="cached"
    )
    assert queued == 1 and absorbed == 19
    (_, v1), (_, v2) = c.seen.grants("node-1", k1)[0], c.seen.grants("node-2", k2)[0]
    assert v1.expires == v2.expires, "both nodes' entries expire with the earlier certificate"
