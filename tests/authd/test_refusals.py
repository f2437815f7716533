"""Bad peers are refused, on both ends of the handshake, and every refusal is counted with its reason."""

from __future__ import annotations

import asyncio
import time

from nodemesh import subjects
from nodemesh.messages.auth import AuthRequired
from testkit.authd_cluster import Cluster, key, poll
from testkit.spiffe_ca import SpiffeCA
from tests.authd.rogue import RogueResponder, rogue_initiate

LOCAL, ROGUE_ID, OTHER, SERVER, ELSEWHERE = 1001, 1003, 1004, 1002, 1005


async def _setup(c: Cluster) -> None:
    for ident, app in (
        (LOCAL, "client"),
        (ROGUE_ID, "rogue"),
        (OTHER, "other"),
        (SERVER, "server"),
        (ELSEWHERE, "x"),
    ):
        await c.add_identity(ident, app)
    await c.add_pod("10.244.1.10", LOCAL, "node-1")
    await c.add_pod("10.244.3.10", ROGUE_ID, "node-3")
    await c.add_pod("10.244.2.10", SERVER, "node-2")
    await c.add_pod("10.244.2.11", ELSEWHERE, "node-2")


async def test_initiator_refuses_bad_responders_with_reasons(cluster: Cluster) -> None:
    c, ca, td = cluster, cluster.ca, cluster.ca.trust_domain
    rogue = RogueResponder("127.0.50.3", ca.bundle_pem)
    try:
        await c.add_node("node-3", "127.0.50.3", rogue.port)
        await _setup(c)
        await c.start_authd("node-1", proactive=False)
        await poll(lambda: c.manager("node-1").store.get(LOCAL), 30, "node-1's SVID")
        now = time.time()
        other_td = SpiffeCA("evil.example")
        sid = f"spiffe://{td}/identity/{ROGUE_ID}"
        cases = [
            ("untrusted-chain", other_td.svid(ROGUE_ID), False),
            ("expired", ca.svid(ROGUE_ID, not_before=now - 3600, not_after=now - 60), False),
            ("not-yet-valid", ca.svid(ROGUE_ID, not_before=now + 600, not_after=now + 3600), False),
            ("wrong-san", ca.svid(OTHER), False),  # a valid SVID, but of an identity we did not ask for
            ("san-count", ca.svid(ROGUE_ID, uris=[sid, f"spiffe://{td}/identity/{OTHER}"]), False),
            ("ca-as-leaf", ca.svid(ROGUE_ID, ca=True), False),
            ("key-usage", ca.svid(ROGUE_ID, key_cert_sign=True), False),  # a leaf that may sign certs
            ("not-hosted", ca.svid(ROGUE_ID), True),
        ]
        k = key(LOCAL, ROGUE_ID, "node-3")
        for reason, (chain, pem), refuse in cases:
            rogue.present(chain, pem, refuse_sni=refuse)
            await c.bus.publish(subjects.auth_required("node-1"), AuthRequired(key=k))
            await poll(lambda r=reason: c.seen.failures("node-1", r, "initiator"), 30, f"a {reason} failure")
            await poll(lambda: k not in c.manager("node-1").inflight, 30, "the attempt to end")
        for reason, _, _ in cases:
            n = await c.metric(
                "node-1", "nodemesh_auth_handshakes_total", role="initiator", result="failed", reason=reason
            )
            assert n == 1, reason
        assert not c.seen.grants("node-1", k), "no verdict for a bad peer"
        entry = c.manager("node-1").entries[k]
        assert entry.state == "failed" and "not-hosted" in entry.last_error
    finally:
        rogue.close()


async def test_responder_refuses_bad_initiators_with_reasons(cluster: Cluster) -> None:
    c, ca, td = cluster, cluster.ca, cluster.ca.trust_domain
    await _setup(c)
    await c.start_authd("node-2")
    await poll(lambda: c.manager("node-2").store.get(SERVER), 30, "node-2's SVID")
    port = c.ports["node-2"]
    now = time.time()
    sid = f"spiffe://{td}/identity/{LOCAL}"
    from_node1 = "127.0.50.1"
    cases = [
        ("untrusted-chain", SpiffeCA("evil.example").svid(LOCAL), from_node1, SERVER),
        ("expired", ca.svid(LOCAL, not_before=now - 3600, not_after=now - 60), from_node1, SERVER),
        ("not-yet-valid", ca.svid(LOCAL, not_before=now + 600, not_after=now + 3600), from_node1, SERVER),
        ("wrong-san", ca.svid(LOCAL, uris=[f"spiffe://{td}/workload/x"]), from_node1, SERVER),
        ("san-count", ca.svid(LOCAL, uris=[sid, f"spiffe://{td}/identity/{OTHER}"]), from_node1, SERVER),
        ("ca-as-leaf", ca.svid(LOCAL, ca=True), from_node1, SERVER),
        ("key-usage", ca.svid(LOCAL, key_cert_sign=True), from_node1, SERVER),
        # a valid SVID of an identity that has no endpoint on the node the connection comes from
        ("not-on-node", ca.svid(ELSEWHERE), from_node1, SERVER),
        ("unknown-node", ca.svid(LOCAL), "127.0.50.9", SERVER),
        # asking for an identity node-2 does not host
        ("not-hosted", ca.svid(LOCAL), from_node1, LOCAL),
    ]
    for reason, (chain, pem), source, asked in cases:
        seen = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda ch=chain, p=pem, s=source, a=asked: rogue_initiate(
                ch, p, ca.bundle_pem, source=s, host="127.0.50.2", port=port, sni_identity=a, td=td
            ),
        )
        assert seen is not None, f"{reason}: the rogue initiator must learn it was refused"
        await poll(lambda r=reason: c.seen.failures("node-2", r, "responder"), 30, f"a {reason} refusal")
    for reason, *_ in cases:
        n = await c.metric(
            "node-2", "nodemesh_auth_handshakes_total", role="responder", result="refused", reason=reason
        )
        assert n == 1, reason
    assert not [
        v for _, n, v in c.seen.granted if n == "node-2" and v.key.remote_identity in (LOCAL, ELSEWHERE)
    ]
    # A good initiator still gets through afterwards (the refusals left no bad state behind).
    chain, pem = ca.svid(LOCAL)
    ok = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: rogue_initiate(
            chain,
            pem,
            ca.bundle_pem,
            source=from_node1,
            host="127.0.50.2",
            port=port,
            sni_identity=SERVER,
            td=td,
        ),
    )
    assert ok is None
