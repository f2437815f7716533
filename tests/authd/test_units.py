"""Pure parts of authd: leaf checks, SNI parsing, the policy pairs it pre-authenticates, entry decisions."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodemesh.messages.identity import Identity, IPCacheEntry, NodeInfo
from services.authd.policy import Pair, PolicyPairs
from services.authd.spiffe import AuthFailure, check_leaf, identity_from_sni, identity_from_spiffe_id
from services.authd.table import Topology, desired_keys, invalid_reason, is_primary, renew_at
from testkit.authd_cluster import key
from testkit.spiffe_ca import SpiffeCA

TD = "cluster.local"


def _der(chain_pem: str) -> bytes:
    return x509.load_pem_x509_certificates(chain_pem.encode())[0].public_bytes(serialization.Encoding.DER)


def test_check_leaf_reasons() -> None:
    ca, now = SpiffeCA(TD), time.time()
    good = _der(ca.svid(7)[0])
    assert check_leaf(good, TD, 7, now).identity == 7
    assert check_leaf(good, TD, None, now).identity == 7
    cases = {
        "wrong-san": (ca.svid(8)[0], 7),
        "san-count": (ca.svid(7, uris=[f"spiffe://{TD}/identity/7", f"spiffe://{TD}/identity/8"])[0], 7),
        "ca-as-leaf": (ca.svid(7, ca=True)[0], 7),
        "expired": (ca.svid(7, not_before=now - 100, not_after=now - 10)[0], 7),
        "not-yet-valid": (ca.svid(7, not_before=now + 100, not_after=now + 200)[0], 7),
    }
    for reason, (pem, expected) in cases.items():
        with pytest.raises(AuthFailure) as ei:
            check_leaf(_der(pem), TD, expected, now)
        assert ei.value.reason == reason
    with pytest.raises(AuthFailure, match="wrong-san"):
        check_leaf(_der(SpiffeCA("other.td").svid(7)[0]), TD, 7, now)
    with pytest.raises(AuthFailure, match="no-peer-cert"):
        check_leaf(None, TD, 7, now)
    with pytest.raises(AuthFailure, match="bad-cert"):
        check_leaf(b"\x30\x03garbage", TD, 7, now)


def test_sni_and_spiffe_id_parsing() -> None:
    assert identity_from_sni(f"1234.{TD}", TD) == 1234
    for bad in (None, "", f"0123.{TD}", f"abc.{TD}", "1234.other.td", "1234", f".{TD}"):
        assert identity_from_sni(bad, TD) is None, bad
    assert identity_from_spiffe_id(f"spiffe://{TD}/identity/42", TD) == 42
    for bad in (f"spiffe://{TD}/identity/042", f"spiffe://{TD}/identity/4/2", "spiffe://x/identity/4", ""):
        assert identity_from_spiffe_id(bad, TD) is None, bad


def _ident(i: int, app: str, ns: str = "default", *extra: str) -> Identity:
    return Identity(id=i, labels=[f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}", *extra])


def _cnp(ns: str, spec: object, kind: str = "CiliumNetworkPolicy") -> dict[str, object]:
    return {"kind": kind, "metadata": {"name": "p", "namespace": ns}, "spec": spec}


def auth_pairs(policies: list[dict[str, object]], ids: list[Identity]) -> tuple[set[Pair], list[str]]:
    return PolicyPairs().compute(policies, ids, None)


def test_policy_pairs() -> None:
    # Allocated identities (>= 256): authd resolves only those as local endpoints.
    a, b, c, d = 1001, 1002, 1003, 1004
    ids = [_ident(a, "web"), _ident(b, "db"), _ident(c, "web", "other"), _ident(d, "cli", "other")]
    ingress = {
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"k8s:app": "web"}}], "authentication": {"mode": "required"}}
        ],
    }
    pairs, errs = auth_pairs([_cnp("default", ingress)], ids)
    assert pairs == {(b, a, 1)} and not errs  # the peer selector is confined to the policy's namespace
    cross_ns = {
        "endpointSelector": {},
        "egress": [
            {
                "toEndpoints": [
                    {"matchExpressions": [{"key": "io.kubernetes.pod.namespace", "operator": "Exists"}]}
                ],
                "authentication": {"mode": "test-always-fail"},
            }
        ],
    }
    pairs, _ = auth_pairs([_cnp("other", cross_ns)], ids)
    assert pairs == {(s, p, 2) for s in (c, d) for p in (a, b, c, d)}
    l4_only = {
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"toPorts": [{"ports": [{"port": "80"}]}], "authentication": {"mode": "required"}}],
    }  # an L4-only rule: every peer
    pairs, _ = auth_pairs([_cnp("", l4_only, "CiliumClusterwideNetworkPolicy")], ids)
    assert {(b, p, 1) for p in (a, b, c, d)} <= pairs and {s for s, _, _ in pairs} == {b}
    entities = {
        "endpointSelector": {},
        "ingress": [{"fromEntities": ["world"], "authentication": {"mode": "required"}}],
    }
    assert {(s, r) for s, r, _ in auth_pairs([_cnp("default", entities)], ids)[0]} >= {(a, 2), (b, 2)}
    disabled = {"endpointSelector": {}, "ingress": [{"authentication": {"mode": "disabled"}}]}
    assert auth_pairs([_cnp("default", disabled)], ids)[0] == set()
    # Malformed policies are reported, never raised, and do not hide the good ones.
    bad = [
        {**_cnp("default", "not a map"), "metadata": {"name": "bad1", "namespace": "default"}},
        {
            **_cnp(
                "default", {"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}}
            ),
            "metadata": {"name": "bad2", "namespace": "default"},
        },
        _cnp("default", ingress),
    ]
    pairs, errs = auth_pairs(bad, ids)
    assert pairs == {(b, a, 1)} and len(errs) == 2 and all("bad" in e for e in errs)


def test_desired_keys_invalidation_and_renewal_order() -> None:
    ids = {i.id: i for i in (_ident(1001, "a"), _ident(1002, "b"))}
    ipc = [
        IPCacheEntry(ip="10.0.1.1", identity=1001, node="n1", pod="a"),
        IPCacheEntry(ip="10.0.2.1", identity=1002, node="n2", pod="b"),
        IPCacheEntry(ip="10.0.3.1", identity=1002, node="n3", pod="b2"),  # n3 is not a known node
    ]
    nodes = {n: NodeInfo(name=n, address=f"127.0.0.{i}", pod_cidr="") for i, n in enumerate(("n1", "n2"), 1)}
    topo = Topology("n1", ipc, nodes)
    want, skip = desired_keys({(1001, 1002, 1), (1002, 1001, 1), (1001, 2, 1)}, topo, ids)
    assert want == {key(1001, 1002, "n2")}
    assert [k.remote_identity for k in skip] == [2]
    assert invalid_reason(key(1001, 1002, "n2"), topo, ids) == ""
    assert invalid_reason(key(1001, 1002, "n9"), topo, ids) == "node-removed"
    assert invalid_reason(key(1001, 1003, "n2"), topo, ids) == "identity-removed"
    gone = Topology("n1", ipc[1:], nodes)
    assert invalid_reason(key(1001, 1002, "n2"), gone, ids) == "endpoint-removed"
    # Of the two nodes of a pair exactly one is primary; the other renews later.
    assert is_primary("n1", key(1001, 1002, "n2")) != is_primary("n2", key(1002, 1001, "n1"))
    assert renew_at(0, 100, True, 0.5) == 50 and renew_at(0, 100, False, 0.5) == 75


def test_policy_without_namespace_is_removed_from_the_engine() -> None:
    # The engine files a namespaced policy with no metadata.namespace under "default"; authd must
    # delete it under the same key, or its pairs outlive the policy.
    ids = [_ident(300, "db"), _ident(301, "web")]
    spec = {
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"app": "web"}}], "authentication": {"mode": "required"}}
        ],
    }
    cnp = {"kind": "CiliumNetworkPolicy", "metadata": {"name": "p"}, "spec": spec}
    pp = PolicyPairs()
    pairs, errs = pp.compute([cnp], ids, None)
    assert pairs and not errs
    assert pp.compute([], ids, None) == (set(), [])
