"""Model helpers: port range chunks, key coverage/intersection, and deny-wins through the lookup.

The property test builds random allow/deny rule sets, resolves them, and checks every packet with
the datapath's lookup (nodemesh/policy/lookup.py): deny if any deny rule matches, else allow
if any allow rule matches, else no hit — whatever the specificity of the rules involved.
"""

from __future__ import annotations

import random

import pytest
import yaml

from nodemesh.policy.compute import intersect
from nodemesh.policy.lookup import lookup
from nodemesh.policy.model import PolicyKey, port_range_chunks
from nodemesh.policy.resolve import resolve
from tests.datapath.policy_helpers import IDENTITIES, WEB


@pytest.mark.parametrize(
    ("lo", "hi", "chunks"),
    [
        (80, 80, [(80, 16)]),
        (8080, 8083, [(8080, 14)]),
        (0, 65535, [(0, 0)]),
        (1, 3, [(1, 16), (2, 15)]),
        (1024, 65535, [(1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]),
        (65535, 65535, [(65535, 16)]),
    ],
    ids=["single", "aligned-4", "everything", "unaligned", "high-half", "top-port"],
)
def test_port_range_chunks(lo: int, hi: int, chunks: list[tuple[int, int]]) -> None:
    assert port_range_chunks(lo, hi) == chunks


@pytest.mark.parametrize("seed", range(20))
def test_port_range_chunks_cover_exactly(seed: int) -> None:
    rng = random.Random(seed)
    lo = rng.randrange(65536)
    hi = rng.randrange(lo, min(65536, lo + rng.choice([1, 10, 1000, 70000])))
    covered: list[int] = []
    for port, plen in port_range_chunks(lo, hi):
        size = 1 << (16 - plen)
        assert port % size == 0  # aligned, so one LPM key
        covered.extend(range(port, port + size))
    assert covered == list(range(lo, hi + 1))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (PolicyKey(0, 0), PolicyKey(5, 0, 6, 80, 16), PolicyKey(5, 0, 6, 80, 16)),
        (PolicyKey(5, 0), PolicyKey(0, 0, 6, 80, 16), PolicyKey(5, 0, 6, 80, 16)),
        (PolicyKey(5, 0, 6, 8000, 13), PolicyKey(0, 0, 6, 8004, 16), PolicyKey(5, 0, 6, 8004, 16)),
        (PolicyKey(5, 0), PolicyKey(6, 0), None),
        (PolicyKey(5, 0, 6), PolicyKey(5, 0, 17), None),
        (PolicyKey(5, 0, 6, 80, 16), PolicyKey(5, 0, 6, 81, 16), None),
        (PolicyKey(5, 0), PolicyKey(5, 1), None),
    ],
    ids=[
        "any-vs-l3l4",
        "l3-vs-l4only",
        "range-vs-port",
        "other-identity",
        "other-proto",
        "other-port",
        "other-dir",
    ],
)
def test_intersect(a: PolicyKey, b: PolicyKey, expected: PolicyKey | None) -> None:
    assert intersect(a, b) == expected
    assert intersect(b, a) == expected
    if expected is not None:
        assert a.covers(expected) and b.covers(expected)


PEERS = ["{matchLabels: {app: fe}}", "{matchLabels: {app: db}}", "{}"]
PORTS = [
    "", "[{ports: [{port: '80', protocol: TCP}]}]", "[{ports: [{port: '80'}]}]",
    "[{ports: [{port: '8000', endPort: 8010, protocol: TCP}]}]", "[{ports: [{protocol: UDP}]}]",
    "[{ports: [{port: '8004', protocol: TCP}]}]",
]  # fmt: skip
# Packets: (identity, proto, dport) — fe 1001, db 1003, web 1000, world 2.
PACKETS = [(i, p, d) for i in (1001, 1003, 1000, 2) for p in (6, 17) for d in (80, 8004, 8010, 9000)]


def _rule_matches(peer: str, ports: str, ident: int, proto: int, dport: int) -> bool:
    labels = dict(lab.split(":", 1)[1].split("=", 1) for lab in IDENTITIES.get(ident, []))
    if peer != "{}":
        app = peer.split("app: ")[1].split("}")[0]
        if labels.get("app") != app or labels.get("io.kubernetes.pod.namespace") != "prod":
            return False
    elif labels.get("io.kubernetes.pod.namespace") != "prod":
        return False  # a CNP's `{}` is its namespace
    if not ports:
        return True
    if "UDP" in ports and "port:" not in ports:
        return proto == 17
    if "TCP" in ports and proto != 6:
        return False
    if "endPort" in ports:
        return 8000 <= dport <= 8010
    want = int(ports.split("port: '")[1].split("'")[0])
    return dport == want


@pytest.mark.parametrize("seed", range(40))
def test_deny_wins_and_auth_through_the_datapath_lookup(seed: int) -> None:
    rng = random.Random(seed)
    rules = [
        (rng.random() < 0.3, rng.random() < 0.3, rng.choice(PEERS), rng.choice(PORTS))
        for _ in range(rng.randint(1, 5))
    ]

    def section(auth: bool, p: str, t: str) -> str:
        out = f"  - fromEndpoints: [{p}]\n" + (f"    toPorts: {t}\n" if t else "")
        return out + ("    authentication: {mode: required}\n" if auth else "")

    allow = [section(a, p, t) for d, a, p, t in rules if not d]
    deny = [section(False, p, t) for d, a, p, t in rules if d]
    text = "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n"
    text += "  endpointSelector: {matchLabels: {app: web}}\n"
    text += "  ingress:\n" + "".join(allow) if allow else "  ingress: [{}]\n"
    text += "  ingressDeny:\n" + "".join(deny) if deny else ""
    res = resolve([yaml.safe_load(text)], [WEB], IDENTITIES, allow_localhost=False)
    entries = res.policies["prod/web"].entries
    for ident, proto, dport in PACKETS:
        denied = any(_rule_matches(p, t, ident, proto, dport) for d, a, p, t in rules if d)
        allowed = any(_rule_matches(p, t, ident, proto, dport) for d, a, p, t in rules if not d)
        auth = any(_rule_matches(p, t, ident, proto, dport) for d, a, p, t in rules if not d and a)
        got = lookup(entries, ident, 0, proto, dport)
        want = "deny" if denied else "allow+auth" if auth else "allow" if allowed else "drop"
        have = "drop" if got is None else "deny" if got.deny else "allow+auth" if got.auth_type else "allow"
        assert have == want, (text, ident, proto, dport)
