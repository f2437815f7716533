"""Snapshot versions and consistency, the per-node cache and the ACK tracker — no gRPC, no Envoy."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig, Secret
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import CommonTlsContext, DownstreamTlsContext

from services.xds.acks import AckEvent, AckTracker, Sent
from services.xds.cache import SnapshotCache
from services.xds.reconcile import build_snapshots
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, InconsistentSnapshot, Snapshot
from services.xds.translate import Translation
from tests.xds.ads_resources import ads, cluster, endpoints, listener, pack, route, simple_snapshot


def test_identical_content_has_identical_versions() -> None:
    a = simple_snapshot(8080, {"b": [9000, 9001]})
    b = simple_snapshot(8080, {"b": [9000, 9001]})
    assert a == b
    for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        assert a.version(t) == b.version(t) and a.version(t)
    c = simple_snapshot(8080, {"b": [9000, 9002]})
    assert c.version(ENDPOINT) != a.version(ENDPOINT)
    # Only the changed type moves; so does exactly one resource version.
    assert all(c.version(t) == a.version(t) for t in (LISTENER, ROUTE, CLUSTER))
    assert c.resource_versions(ENDPOINT)["b"] != a.resource_versions(ENDPOINT)["b"]


def test_replace_reuses_untouched_resources() -> None:
    a = simple_snapshot(8080, {"b": [9000]})
    b = a.replace(ENDPOINT, upsert=[endpoints("b", [9001])])
    assert b.resources(LISTENER)["web"] is a.resources(LISTENER)["web"]
    assert b.version(ENDPOINT) != a.version(ENDPOINT)
    assert b.replace(ENDPOINT, upsert=[endpoints("b", [9000])]) == a
    assert CLUSTER not in [t for t in b if not b.resources(t)]
    assert a.replace(CLUSTER, remove=["b"]).resources(CLUSTER) == {}


@pytest.mark.parametrize(
    ("drop_type", "drop_name"),
    [(ROUTE, "web-routes"), (ENDPOINT, "b")],
    ids=["listener-names-missing-route", "eds-cluster-without-endpoints"],
)
def test_consistent_rejects_dangling_names(drop_type: str, drop_name: str) -> None:
    snap = simple_snapshot(8080, {"b": [9000]})
    snap.consistent()
    broken = snap.replace(drop_type, remove=[drop_name])
    with pytest.raises(InconsistentSnapshot) as ei:
        broken.consistent()
    assert ei.value.missing == [(drop_type, drop_name)]
    assert drop_name in str(ei.value)


def test_consistent_checks_sds_secrets_of_listeners() -> None:
    tls = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[SdsSecretConfig(name="ns/cert", sds_config=ads())]
        )
    )
    lst = listener("tls", 8443, "r")
    lst.filter_chains[0].transport_socket.CopyFrom(
        TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls))
    )
    snap = Snapshot.of([lst, route("r", {"/": "b"}), cluster("b"), endpoints("b", [1])])
    with pytest.raises(InconsistentSnapshot, match="ns/cert"):
        snap.consistent()
    snap.replace(SECRET, upsert=[Secret(name="ns/cert")]).consistent()


def test_snapshot_rejects_misfiled_resources() -> None:
    with pytest.raises(ValueError, match="named"):
        Snapshot({CLUSTER: {"a": cluster("b")}})
    with pytest.raises(ValueError, match="filed under"):
        Snapshot({ROUTE: {"b": cluster("b")}})
    with pytest.raises(ValueError, match="unsupported"):
        Snapshot({"type.googleapis.com/foo": {}})


async def test_cache_wakes_only_on_effective_change() -> None:
    cache = SnapshotCache()
    w1, w2 = cache.watch("n1"), cache.watch("n2")
    assert await w1.changed() is None  # initial state: nothing to serve yet
    await w2.changed()
    s1 = simple_snapshot(1, {"b": [2]})
    assert cache.set_default(s1)
    assert await asyncio.wait_for(w1.changed(), 1) == s1
    assert await asyncio.wait_for(w2.changed(), 1) == s1
    assert not cache.set_default(simple_snapshot(1, {"b": [2]}))  # same content: no wake-up
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(w1.changed(), 0.05)
    s2 = simple_snapshot(1, {"b": [3]})
    assert cache.set_snapshot("n1", s2)
    assert await asyncio.wait_for(w1.changed(), 1) == s2
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(w2.changed(), 0.05)  # n2 still on the default
    cache.clear("n1")
    assert await asyncio.wait_for(w1.changed(), 1) == s1
    w1.close()
    assert cache.watched_nodes() == ["n2"]


def test_tracker_applies_acks_and_partial_lds_nacks() -> None:
    t = AckTracker()
    s1 = Sent("n", LISTENER, "v1", "1", {"a": "a1", "b": "b1"}, full_state=True)
    t.record(AckEvent(s1, ack=True))
    assert t.state("n", LISTENER, "a").applied == "a1"
    s2 = Sent("n", LISTENER, "v2", "2", {"a": "a2", "b": "b2", "c": "c1"}, full_state=True)
    t.record(AckEvent(s2, ack=False, error="Error adding/updating listener(s) c: bad address"))
    assert t.state("n", LISTENER, "a").applied == "a2"  # LDS applies per resource
    st = t.state("n", LISTENER, "c")
    assert st.applied is None and st.rejected == "c1" and "bad address" in st.error
    s3 = Sent("n", LISTENER, "v3", "3", {"a": "a2"}, full_state=True)
    t.record(AckEvent(s3, ack=True))
    assert t.state("n", LISTENER, "b").applied is None  # SotW full state: b removed
    # CDS errors join resources with ", " and cluster names contain ":".
    c = Sent("n", CLUSTER, "c1", "6", {"ns:a:1": "a1", "ns:b:1": "b1", "ns:ok:1": "k1"}, full_state=True)
    t.record(AckEvent(c, ack=False, error="Error adding/updating cluster(s) ns:a:1: bad x, ns:b:1: bad y"))
    assert (
        t.state("n", CLUSTER, "ns:a:1").rejected == "a1" and t.state("n", CLUSTER, "ns:b:1").rejected == "b1"
    )
    assert t.state("n", CLUSTER, "ns:ok:1").applied == "k1"
    # A validation error rejects the whole response, even for LDS/CDS.
    v = Sent("n", LISTENER, "v4", "7", {"a": "a9"}, full_state=True)
    t.record(AckEvent(v, ack=False, error="Proto constraint validation failed: ..."))
    assert t.state("n", LISTENER, "a").applied == "a2" and t.state("n", LISTENER, "a").rejected == "a9"
    r = Sent("n", ROUTE, "r1", "4", {"x": "x1"})
    t.record(AckEvent(r, ack=False, error="whatever"))
    assert t.state("n", ROUTE, "x").rejected == "x1"  # other types: the whole response is rejected
    d = Sent("n", ENDPOINT, "e1", "5", {"e": "e1"}, removed=("old",), delta=True)
    t.record(AckEvent(Sent("n", ENDPOINT, "e0", "0", {"old": "o"}, delta=True), ack=True))
    t.record(AckEvent(d, ack=True))
    assert t.state("n", ENDPOINT, "old").applied is None and t.state("n", ENDPOINT, "e").applied == "e1"


def test_build_snapshots_adds_node_extras_and_leaves_out_dangling_resources() -> None:
    base = simple_snapshot(8080, {"b": [9000]})
    tr = Translation(resources={t: {n: r.message for n, r in base.resources(t).items()} for t in base})
    # node-2 gets an extra listener (a CEC with a nodeSelector) that names a route nobody provides.
    tr.node_resources["node-2"] = {LISTENER: {"extra": listener("extra", 9090, "missing-routes")}}
    snaps = build_snapshots(tr)
    assert snaps.default == base and snaps.for_node("node-1") == base
    n2 = snaps.for_node("node-2")
    n2.consistent()
    assert "extra" not in n2.resources(LISTENER)
    assert n2.resources(LISTENER)["web"] is snaps.default.resources(LISTENER)["web"]  # not reserialized
    assert snaps.errors == [
        "node node-2: Listener 'extra' left out: it references missing RouteConfiguration 'missing-routes'"
    ]
    tr.node_resources["node-2"][ROUTE] = {"missing-routes": route("missing-routes", {"/": "b"})}
    assert "extra" in build_snapshots(tr).for_node("node-2").resources(LISTENER)
