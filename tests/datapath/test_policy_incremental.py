# ruff: noqa: E501  (one YAML policy per table row reads better on long lines)
"""The incremental engine returns only what changed, and always agrees with a full resolve."""

from __future__ import annotations

import random

import pytest

from nodemesh.policy.incremental import Changes, PolicyEngine
from nodemesh.policy.model import AuthPair, Endpoint, PolicyKey, PolicyRef, PolicyValue
from nodemesh.policy.render import render_entry
from nodemesh.policy.resolve import resolve
from tests.datapath.policy_helpers import IDENTITIES, NAMES, docs

WEB = Endpoint(key="prod/web", identity=1000)
FE = Endpoint(key="prod/fe", identity=1001)
DB = Endpoint(key="prod/db", identity=1003)


def cnp(name: str, body: str, app: str = "web") -> dict[str, object]:
    text = f"kind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n{body}"
    return docs(text)[0]


FROM_FE_80 = "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"


def engine() -> PolicyEngine:
    eng = PolicyEngine()
    for i, labels in IDENTITIES.items():
        eng.upsert_identity(i, labels)
    for ep in (WEB, FE, DB):
        eng.upsert_endpoint(ep)
    return eng


def diff(ch: Changes, key: str) -> tuple[list[str], list[str]]:
    """(upserts, deletes) of one endpoint, rendered."""
    ec = ch.endpoints[key]
    ups = sorted(render_entry(k, v, NAMES) for k, v in ec.upserts.items())
    dels = sorted(render_entry(k, PolicyValue(), NAMES).rsplit(" ", 1)[0] for k in ec.deletes)
    return ups, dels


def test_policy_add_touches_only_selected_endpoints() -> None:
    eng = engine()
    ch = eng.upsert_policy(cnp("p", FROM_FE_80))
    assert set(ch.endpoints) == {"prod/web"}
    assert diff(ch, "prod/web") == (
        ["ingress fe tcp/80 allow", "ingress host any allow"],
        ["ingress any any"],
    )
    assert ch.endpoints["prod/web"].ingress_enforced


def test_policy_update_rewrites_only_changed_entries() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = eng.upsert_policy(cnp("p", FROM_FE_80.replace("'80'", "'81'")))
    assert diff(ch, "prod/web") == (["ingress fe tcp/81 allow"], ["ingress fe tcp/80"])


def test_policy_moves_between_endpoints() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = eng.upsert_policy(cnp("p", FROM_FE_80, app="db"))
    assert set(ch.endpoints) == {"prod/web", "prod/db"}
    assert diff(ch, "prod/web") == (["ingress any any allow"], ["ingress fe tcp/80", "ingress host any"])


def test_policy_delete_restores_allow_all() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = eng.delete_policy("CiliumNetworkPolicy", "prod", "p")
    assert diff(ch, "prod/web") == (["ingress any any allow"], ["ingress fe tcp/80", "ingress host any"])
    assert not ch.endpoints["prod/web"].ingress_enforced


def test_unchanged_policy_is_a_no_op() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    assert eng.upsert_policy(cnp("p", FROM_FE_80)).endpoints == {}


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (
            lambda e: e.upsert_identity(
                1004, ["k8s:app=fe", "k8s:io.kubernetes.pod.namespace=prod", "k8s:v=2"]
            ),
            (["ingress 1004 tcp/80 allow"], []),
        ),
        (lambda e: e.delete_identity(1001), ([], ["ingress fe tcp/80"])),
        (
            lambda e: e.upsert_identity(1001, ["k8s:app=other", "k8s:io.kubernetes.pod.namespace=prod"]),
            ([], ["ingress fe tcp/80"]),
        ),
    ],
    ids=["new-identity-matching-selector", "identity-deleted", "identity-labels-no-longer-match"],
)
def test_identity_changes_update_only_their_entries(
    op: object, expected: tuple[list[str], list[str]]
) -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = op(eng)  # type: ignore[operator]
    assert set(ch.endpoints) == {"prod/web"}
    assert diff(ch, "prod/web") == expected


def test_identity_not_selected_changes_nothing() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    assert (
        eng.upsert_identity(1005, ["k8s:app=batch", "k8s:io.kubernetes.pod.namespace=prod"]).endpoints == {}
    )


def test_endpoint_identity_change_reselects_rules() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = eng.upsert_endpoint(Endpoint(key="prod/web", identity=1003))  # now a db pod: not selected
    assert diff(ch, "prod/web") == (["ingress any any allow"], ["ingress fe tcp/80", "ingress host any"])


def test_endpoint_add_and_delete() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ch = eng.upsert_endpoint(Endpoint(key="prod/web-2", identity=1000))
    assert diff(ch, "prod/web-2")[0] == [
        "egress any any allow",
        "ingress fe tcp/80 allow",
        "ingress host any allow",
    ]
    ch = eng.delete_endpoint("prod/web-2")
    assert ch.endpoints["prod/web-2"].removed
    assert len(ch.endpoints["prod/web-2"].deletes) == 3
    assert eng.policy("prod/web-2") is None


def test_invalid_update_keeps_last_valid_version() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ref = PolicyRef("CiliumNetworkPolicy", "prod", "p")
    ch = eng.upsert_policy(cnp("p", FROM_FE_80.replace("'80'", "'eighty!'")))
    assert ch.endpoints == {}
    assert [str(e) for e in ch.status[ref]] == [
        'spec.ingress[0].toPorts[0].ports[0].port: "eighty!" is not a port'
    ]
    assert eng.errors() == {ref: ch.status[ref]}
    assert PolicyKey(1001, 0, 6, 80, 16) in eng.policy("prod/web").entries  # type: ignore[union-attr]
    ch = eng.upsert_policy(cnp("p", FROM_FE_80.replace("'80'", "'81'")))
    assert ch.status[ref] == () and eng.errors() == {}
    assert diff(ch, "prod/web") == (["ingress fe tcp/81 allow"], ["ingress fe tcp/80"])


def test_cidr_identities_allocated_shared_and_released() -> None:
    eng = engine()
    ch = eng.upsert_policy(
        cnp("a", "  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n")
    )
    assert ch.cidr_upserts == {"10.0.0.0/8": 16777216, "10.1.0.0/16": 16777217}
    ch = eng.upsert_policy(cnp("b", "  egress:\n  - toCIDR: [10.0.0.0/8]\n", app="db"))
    assert ch.cidr_upserts == {}
    ch = eng.delete_policy("CiliumNetworkPolicy", "prod", "a")
    assert ch.cidr_deletes == {"10.1.0.0/16": 16777217}
    assert eng.cidr_identities() == {"10.0.0.0/8": 16777216}
    ch = eng.delete_policy("CiliumNetworkPolicy", "prod", "b")
    assert ch.cidr_deletes == {"10.0.0.0/8": 16777216}


def test_cidr_identities_stable_across_restart() -> None:
    pol = cnp("a", "  egress:\n  - toCIDR: [192.168.0.0/16, 10.0.0.0/8]\n")
    first = resolve([pol], [WEB], IDENTITIES).cidr_identities
    # A restarted engine seeded with the previous map keeps every id, even if CIDRs arrive in another order.
    other = cnp("a", "  egress:\n  - toCIDR: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n")
    again = resolve([other], [WEB], IDENTITIES, cidr_identities=first).cidr_identities
    assert {c: again[c] for c in first} == first
    assert again["172.16.0.0/12"] not in first.values()


def test_adding_nested_cidr_updates_broader_rule() -> None:
    eng = engine()
    eng.upsert_policy(cnp("a", "  egress:\n  - toCIDR: [10.0.0.0/8]\n"))
    ch = eng.upsert_policy(cnp("b", "  egress:\n  - toCIDR: [10.1.0.0/16]\n", app="db"))
    # The new /16 identity is inside web's 10/8 rule, so web gets an entry for it too.
    assert diff(ch, "prod/web") == (["egress 16777217 any allow"], [])


def test_required_auth_pairs() -> None:
    eng = engine()
    eng.upsert_policy(
        cnp(
            "p",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n",
        )
    )
    eng.upsert_policy(
        cnp(
            "q",
            "  egress:\n  - toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n    authentication: {mode: test-always-fail}\n",
            app="db",
        )
    )
    pairs = eng.required_auth_pairs()
    assert AuthPair(1000, 1001, 1) in pairs
    # An any-peer entry stands for every workload identity (not reserved, not CIDR).
    assert {p for p in pairs if p.local == 1003} == {AuthPair(1003, i, 2) for i in IDENTITIES}
    assert all(p.remote >= 256 for p in pairs)


POLICIES = [
    cnp("p1", FROM_FE_80),
    cnp("p2", "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n"),
    cnp(
        "p3",
        "  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]\n  - toEndpoints: [{}]\n    authentication: {mode: required}\n",
        app="fe",
    ),
    cnp(
        "p4",
        "  ingress:\n  - toPorts: [{ports: [{port: '8000', endPort: 8100}]}]\n  egressDeny:\n  - toEntities: [world]\n",
        app="db",
    ),
    docs(
        "kind: NetworkPolicy\nmetadata: {name: k, namespace: prod}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n"
    )[0],
    docs(
        "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [cluster]}]\n"
    )[0],
]
EXTRA_IDS = {
    1004: ["k8s:app=fe", "k8s:io.kubernetes.pod.namespace=prod"],
    1005: ["k8s:app=db", "k8s:io.kubernetes.pod.namespace=dev"],
}


@pytest.mark.parametrize("seed", range(8))
def test_random_sequence_matches_full_resolve_and_diffs_replay(seed: int) -> None:
    rng = random.Random(seed)
    eng = PolicyEngine()
    ref = PolicyEngine(from_scratch=True)  # recomputes whole endpoints: the reference
    mirror: dict[str, dict[PolicyKey, PolicyValue]] = {}
    ids: dict[int, list[str]] = {}
    eps: dict[str, Endpoint] = {}
    pols: dict[str, dict[str, object]] = {}
    all_ids = {**IDENTITIES, **EXTRA_IDS}
    all_eps = [WEB, FE, DB, Endpoint(key="prod/fe-2", identity=1004), Endpoint(key="dev/db", identity=1005),
               Endpoint(key="prod/web-named", identity=1000, named_ports={"http": (6, 8080)})]  # fmt: skip
    for _ in range(60):
        what = rng.randrange(6)
        if what == 0:
            i = rng.choice(list(all_ids))
            ch = eng.upsert_identity(i, all_ids[i])
            ref.upsert_identity(i, all_ids[i])
            ids[i] = all_ids[i]
        elif what == 1 and ids:
            i = rng.choice(list(ids))
            ch = eng.delete_identity(i)
            ref.delete_identity(i)
            del ids[i]
        elif what == 2:
            ep = rng.choice(all_eps)
            ch = eng.upsert_endpoint(ep)
            ref.upsert_endpoint(ep)
            eps[ep.key] = ep
        elif what == 3 and eps:
            k = rng.choice(list(eps))
            ch = eng.delete_endpoint(k)
            ref.delete_endpoint(k)
            del eps[k]
        elif what == 4:
            p = rng.choice(POLICIES)
            ch = eng.upsert_policy(p)
            ref.upsert_policy(p)
            pols[str(p["metadata"])] = p  # type: ignore[index]
        elif pols:
            k = rng.choice(list(pols))
            p = pols.pop(k)
            meta = p["metadata"]
            args = (
                str(p["kind"]),
                meta.get("namespace", "") if p["kind"] != "CiliumClusterwideNetworkPolicy" else "",
                meta["name"],
            )  # type: ignore[attr-defined,index]
            ch = eng.delete_policy(*args)
            ref.delete_policy(*args)
        else:
            continue
        for key, ec in ch.endpoints.items():
            m = mirror.setdefault(key, {})
            for k in ec.deletes:
                m.pop(k)
            m.update(ec.upserts)
            if ec.removed:
                del mirror[key]
        assert {k: (p.entries, p.l7) for k, p in eng.policies().items()} == {
            k: (p.entries, p.l7) for k, p in ref.policies().items()
        }
    full = resolve(pols.values(), eps.values(), ids)  # type: ignore[arg-type]
    assert {k: p.entries for k, p in eng.policies().items()} == {
        k: p.entries for k, p in full.policies.items()
    }
    assert mirror == {k: p.entries for k, p in full.policies.items()}


def test_required_auth_pairs_cluster_wide_from_raw_policies() -> None:
    from nodemesh.messages.identity import Identity
    from nodemesh.policy import required_auth_pairs

    pol = cnp(
        "p",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n",
    )
    idents = [Identity(id=i, labels=labels) for i, labels in IDENTITIES.items()]
    assert required_auth_pairs([pol], idents) == {AuthPair(1000, 1001, 1)}
    assert required_auth_pairs([pol], IDENTITIES) == {AuthPair(1000, 1001, 1)}


def test_endpoint_with_explicit_labels_reselected_when_labels_change() -> None:
    eng = engine()
    eng.upsert_policy(cnp("p", FROM_FE_80))
    ns = "k8s:io.kubernetes.pod.namespace=prod"
    ch = eng.upsert_endpoint(Endpoint(key="prod/x", identity=4242, labels=("k8s:app=web", ns)))
    assert diff(ch, "prod/x")[0] == [
        "egress any any allow",
        "ingress fe tcp/80 allow",
        "ingress host any allow",
    ]
    ch = eng.upsert_endpoint(Endpoint(key="prod/x", identity=4242, labels=("k8s:app=batch", ns)))
    assert diff(ch, "prod/x") == (["ingress any any allow"], ["ingress fe tcp/80", "ingress host any"])


def test_identity_churn_on_endpoint_with_deny_and_auth_matches_reference() -> None:
    """Endpoints with deny/auth keys fold only the region a change touches; compare every step."""
    pols = [
        cnp(
            "a",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {tier: client}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '9000', endPort: 9007}]}]\n",
        ),
        cnp(
            "b",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {tier: client}}]\n    authentication: {mode: required}\n",
        ),
        cnp(
            "c",
            "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {bad: 'yes'}}]\n    toPorts: [{ports: [{port: '9004', protocol: TCP}]}]\n",
        ),
        cnp("d", "  ingressDeny:\n  - toPorts: [{ports: [{port: '9006', protocol: UDP}]}]\n"),
    ]
    eng, ref = PolicyEngine(), PolicyEngine(from_scratch=True)
    for e in (eng, ref):
        e.upsert_identity(1000, IDENTITIES[1000])
        e.upsert_endpoint(WEB)
        for p in pols:
            e.upsert_policy(p)
    rng = random.Random(7)
    for step in range(120):
        ident = 5000 + rng.randrange(30)
        labels = ["k8s:io.kubernetes.pod.namespace=prod", "k8s:tier=client"]
        if rng.random() < 0.4:
            labels.append("k8s:bad=yes")
        if rng.random() < 0.3:
            chs = [e.delete_identity(ident) for e in (eng, ref)]
        else:
            chs = [e.upsert_identity(ident, labels) for e in (eng, ref)]
        assert eng.policy("prod/web") == ref.policy("prod/web"), step
        assert chs[0] == chs[1], step
