"""Rotation without a gap, removal on policy/endpoint/node changes, test-always-fail, reserved skips."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.js.errors import KeyNotFoundError

from nodemesh import subjects
from nodemesh.codec import decode, encode
from nodemesh.messages.auth import AuthEntry, AuthListReply, AuthListRequest, AuthRequired
from nodemesh.messages.identity import TrustBundle
from services.authd.manager import kv_key
from testkit.authd_cluster import Cluster, key, poll
from testkit.spiffe_ca import SpiffeCA
from tests.authd.test_paths import CLIENT, CLIENT2, EGRESS_AUTH, INGRESS_AUTH, SERVER, _pods

TTL = 6.0


def _gaps(grants: list[tuple[float, float]], until: float) -> list[tuple[float, float]]:
    """Moments with no valid verdict: (from, to) between the first grant and ``until``."""
    gaps = []
    covered = 0.0
    for received, expires in sorted(grants):
        if covered and received > covered:
            gaps.append((covered, received))
        covered = max(covered, expires)
    if covered < until:
        gaps.append((covered, until))
    return gaps


async def test_rotation_under_repeated_reauth_never_lapses(cluster: Cluster) -> None:
    c = cluster
    c.ca.ttl = TTL  # every SVID lives 6 s: renewed at ~3 s, verdicts re-authenticated before expiry
    await _pods(c)
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.put_policy("client-out", EGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    k1, k2 = key(CLIENT, SERVER, "node-2"), key(SERVER, CLIENT, "node-1")
    await poll(lambda: c.seen.grants("node-1", k1) and c.seen.grants("node-2", k2), 30, "first verdicts")
    start = time.time()
    while time.time() < start + 3 * TTL:  # "traffic": the datapath keeps asking
        await c.bus.publish(subjects.auth_required("node-1"), AuthRequired(key=k1))
        await c.bus.publish(subjects.auth_required("node-2"), AuthRequired(key=k2))
        await asyncio.sleep(0.25)
    end = time.time()
    for node, k in (("node-1", k1), ("node-2", k2)):
        grants = [(t, v.expires) for t, v in c.seen.grants(node, k)]
        assert _gaps(grants, end) == [], f"{node}: verdict lapsed"
        assert len({e for _, e in grants}) >= 4, f"{node}: verdicts were renewed with rotated SVIDs"
        assert not c.seen.of_type(node, "expired")
        assert not c.seen.revokes(node, k)
    renewals = [i for _, i in c.ca.signed if i in (CLIENT, SERVER)]
    assert len(renewals) >= 6, "SVIDs rotated several times"


async def test_removal_on_policy_endpoint_and_node_changes(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.put_policy("client-out", EGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    k1, k2 = key(CLIENT, SERVER, "node-2"), key(SERVER, CLIENT, "node-1")
    await poll(lambda: c.seen.grants("node-1", k1) and c.seen.grants("node-2", k2), 30, "verdicts")

    # Policy: the egress rule goes → node-1's entry is revoked, node-2's (ingress) stays.
    await c.delete_policy("client-out")
    await poll(lambda: c.seen.revokes("node-1", k1), 30, "revocation on node-1")
    removed = [e for e in c.seen.of_type("node-1", "removed") if e.key == k1]
    assert removed and removed[0].reason == "policy-removed"
    assert k1 not in c.manager("node-1").entries
    assert not c.seen.revokes("node-2", k2)

    # Endpoint: the client pod goes → node-2 revokes its entry; node-1 drops the client's key.
    await c.remove_pod("10.244.1.10")
    await poll(lambda: c.seen.revokes("node-2", k2), 30, "revocation on node-2")
    assert [e.reason for e in c.seen.of_type("node-2", "removed") if e.key == k2] == ["endpoint-removed"]
    await poll(lambda: c.manager("node-1").store.get(CLIENT) is None, 30, "node-1 to drop the client's key")

    # The pod comes back (re-authenticated ahead of traffic), then its node goes.
    await c.add_pod("10.244.1.10", CLIENT, "node-1")
    await poll(lambda: len(c.seen.grants("node-2", k2)) >= 2, 30, "re-authentication of the returning pod")
    await c.remove_node("node-1")
    await poll(lambda: len(c.seen.revokes("node-2", k2)) >= 2, 30, "revocation when the node goes")
    assert [e.reason for e in c.seen.of_type("node-2", "removed") if e.key == k2][-1] == "node-removed"


async def test_always_fail_mode_and_reserved_identities(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    world_auth = {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"fromEntities": ["world"], "authentication": {"mode": "required"}}],
    }
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.put_policy("from-world", world_auth)
    await c.start_authd("node-2", mode="test-always-fail")
    await c.start_authd("node-1")
    k2 = key(SERVER, CLIENT, "node-1")
    await poll(lambda: c.seen.failures("node-2", "test-always-fail"), 30, "an always-fail failure")
    skipped = c.seen.of_type("node-2", "skipped")
    assert skipped and {e.reason for e in skipped} == {"reserved-identity"}
    assert 2 in {e.key.remote_identity for e in skipped}  # world (the engine may add world-ipv4/6)
    assert all(e.key.remote_identity < 256 for e in skipped)
    # A datapath signal for a reserved peer is skipped explicitly, not attempted.
    await c.bus.publish(subjects.auth_required("node-2"), AuthRequired(key=key(SERVER, 2, "node-1")))
    n_skipped = len(skipped)
    await poll(lambda: len(c.seen.of_type("node-2", "skipped")) == n_skipped + 1, 30, "a skipped event")
    await asyncio.sleep(0.3)
    assert not c.seen.grants("node-2", k2)
    assert c.manager("node-2").entries[k2].state == "failed"
    n = await c.metric(
        "node-2",
        "nodemesh_auth_handshakes_total",
        role="initiator",
        result="failed",
        reason="test-always-fail",
    )
    assert n >= 1


async def test_restart_restores_entries_from_kv_and_still_revokes(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    k = key(SERVER, CLIENT, "node-1")
    await poll(lambda: c.seen.grants("node-2", k), 30, "a verdict")
    (_, first), *_ = c.seen.grants("node-2", k)
    kv = await c.bus.kv("auth")
    stored = decode((await kv.get(kv_key("node-2", k))).value, AuthEntry)
    assert stored.state == "authenticated" and stored.expires == first.expires

    await c.stop_authd("node-2")
    await c.start_authd("node-2")
    # The new run knows the entry at once (no handshake needed for it to be listed and renewed).
    listed = await c.bus.request(subjects.auth_list("node-2"), AuthListRequest(), AuthListReply)
    assert [(e.key, e.state) for e in listed.entries] == [(k, "authenticated")]
    # ...so it revokes it when the policy goes, although this run never handshook for it.
    await c.delete_policy("server-in")
    await poll(lambda: c.seen.revokes("node-2", k), 30, "revocation by the restarted authd")
    for _ in range(200):
        if not await _kv_has(kv, kv_key("node-2", k)):
            break
        await asyncio.sleep(0.05)
    assert not await _kv_has(kv, kv_key("node-2", k)), "the KV entry is deleted with the revocation"


async def _kv_has(kv: Any, k: str) -> bool:
    try:
        entry = await kv.get(k)
    except KeyNotFoundError:
        return False
    return bool(entry.value)


async def test_trust_bundle_updates_are_followed(cluster: Cluster) -> None:
    c = cluster
    await _pods(c)
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    await poll(lambda: c.seen.grants("node-2", key(SERVER, CLIENT, "node-1")), 30, "a verdict")
    # The bundle is replaced by a foreign root only: SVIDs of our CA stop verifying.
    foreign = SpiffeCA(c.ca.trust_domain)
    trust = await c.bus.kv("trust")
    td = c.ca.trust_domain
    await trust.put(
        "bundle", encode(TrustBundle(trust_domain=td, roots_pem=[foreign.bundle_pem], revision=2))
    )
    await poll(
        lambda: all(c.manager(n).store.bundle_pem == foreign.bundle_pem for n in ("node-1", "node-2")),
        30,
        "both authds to follow the new bundle",
    )
    await c.add_identity(CLIENT2, "client", extra=("k8s:version=v2",))
    await c.add_pod("10.244.1.11", CLIENT2, "node-1")
    k2 = key(SERVER, CLIENT2, "node-1")
    await poll(
        lambda: [e for e in c.seen.of_type("node-2", "failed") if e.key == k2], 30, "a refused handshake"
    )
    assert not c.seen.grants("node-2", k2)
    # Both roots trusted (a CA rotation's overlap): the retry succeeds.
    both = TrustBundle(trust_domain=td, roots_pem=[c.ca.bundle_pem, foreign.bundle_pem], revision=3)
    await trust.put("bundle", encode(both))
    await poll(lambda: c.seen.grants("node-2", k2), 60, "a verdict once our root is back in the bundle")


async def test_verdict_expires_when_the_peer_is_gone(cluster: Cluster) -> None:
    c = cluster
    c.ca.ttl = 4.0
    await _pods(c)
    await c.put_policy("server-in", INGRESS_AUTH)
    await c.start_authd("node-1")
    await c.start_authd("node-2")
    k = key(SERVER, CLIENT, "node-1")
    await poll(lambda: c.seen.grants("node-2", k), 30, "a verdict")
    await c.stop_authd("node-1")  # renewals now fail: nobody answers on node-1
    await poll(lambda: [e for e in c.seen.of_type("node-2", "expired") if e.key == k], 30, "an expired event")
    await poll(lambda: c.seen.revokes("node-2", k), 30, "the expired verdict revoked")
    assert c.seen.failures("node-2", "connect"), "the failed renewals are visible with their reason"
    entry = c.manager("node-2").entries[k]
    assert entry.state in ("expired", "failed") and "connect" in entry.last_error
