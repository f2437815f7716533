# ruff: noqa: E501  (one YAML policy per table row reads better on long lines)
"""Table-driven: one policy feature per case → the exact policy map of endpoint prod/web (identity
1000). Lines read ``direction peer proto/port verdict`` (see nodemesh/policy/render.py)."""

from __future__ import annotations

import pytest

from nodemesh.policy.model import Endpoint
from tests.datapath.policy_helpers import lines

CNP = "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n"
CCNP = "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n"
KNP = "kind: NetworkPolicy\nmetadata: {name: k, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n"
OPEN_EGRESS = "egress any any allow"
OPEN_INGRESS = "ingress any any allow"
HOST = "ingress host any allow"

CASES = [
    ("no-policy", "", [OPEN_EGRESS, OPEN_INGRESS]),
    (
        "policy-selecting-other-endpoint",
        CNP.replace("app: web", "app: db") + "  ingress: [{}]\n",
        [OPEN_EGRESS, OPEN_INGRESS],
    ),
    (
        "cnp-from-endpoints-scoped-to-own-namespace",
        CNP + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress fe any allow", HOST],
    ),
    (
        "cnp-explicit-namespace-label",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe, k8s:io.kubernetes.pod.namespace: dev}}]\n",
        [OPEN_EGRESS, "ingress dev/fe any allow", HOST],
    ),
    (
        "cnp-namespace-labels-stay-in-own-namespace",
        CNP + "  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: b}}]\n",
        [OPEN_EGRESS, HOST],
    ),
    (
        "cnp-namespace-labels-across-namespaces",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: b},"
        + " matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]\n",
        [OPEN_EGRESS, "ingress dev/fe any allow", HOST],
    ),
    (
        "match-expressions-notin",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [fe]}]}]\n",
        [OPEN_EGRESS, "ingress db any allow", HOST, "ingress web any allow"],
    ),
    (
        "match-expressions-in-doesnotexist",
        CCNP
        + "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [fe, db]},"
        + " {key: k8s:io.kubernetes.pod.namespace, operator: NotIn, values: [dev]}, {key: tier, operator: DoesNotExist}]}]\n",
        [OPEN_EGRESS, "ingress db any allow", "ingress fe any allow", HOST],
    ),
    (
        "ccnp-not-namespace-scoped",
        CCNP + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress dev/fe any allow", "ingress fe any allow", HOST],
    ),
    (
        "ccnp-empty-selector-is-any",
        CCNP + "  ingress:\n  - fromEndpoints: [{}]\n",
        [OPEN_EGRESS, OPEN_INGRESS, HOST],
    ),
    (
        "cnp-empty-selector-is-namespace",
        CNP + "  ingress:\n  - fromEndpoints: [{}]\n",
        [OPEN_EGRESS, "ingress db any allow", "ingress fe any allow", HOST, "ingress web any allow"],
    ),
    (
        "l4-only-rule-is-identity-0",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        [OPEN_EGRESS, "ingress any tcp/80 allow", HOST],
    ),
    (
        "port-range-split-into-prefix-chunks",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '8000', endPort: 8010, protocol: TCP}]}]\n",
        [
            OPEN_EGRESS,
            "ingress any tcp/8000-8007 allow",
            "ingress any tcp/8008-8009 allow",
            "ingress any tcp/8010 allow",
            HOST,
        ],
    ),
    (
        "protocol-any-with-port-is-tcp-udp-sctp",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '53'}]}]\n",
        [
            OPEN_EGRESS,
            "ingress any sctp/53 allow",
            "ingress any tcp/53 allow",
            "ingress any udp/53 allow",
            HOST,
        ],
    ),
    (
        "protocol-without-port",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{protocol: UDP}]}]\n",
        [OPEN_EGRESS, "ingress fe udp/any allow", HOST],
    ),
    (
        "icmps-type-in-port-field",
        CNP + "  ingress:\n  - icmps: [{fields: [{type: 8}, {type: EchoReply, family: IPv4}]}]\n",
        [OPEN_EGRESS, "ingress any icmp/type0 allow", "ingress any icmp/type8 allow", HOST],
    ),
    (
        "icmp-protocol-in-toports",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '8', protocol: ICMP}]}]\n",
        [OPEN_EGRESS, "ingress any icmp/type8 allow", HOST],
    ),
    (
        "to-entities-world",
        CNP + "  egress:\n  - toEntities: [world]\n",
        [
            "egress world any allow",
            "egress world-ipv4 any allow",
            "egress world-ipv6 any allow",
            OPEN_INGRESS,
        ],
    ),
    (
        "to-entities-cluster",
        CNP + "  egress:\n  - toEntities: [cluster]\n",
        [
            "egress db any allow",
            "egress dev/fe any allow",
            "egress fe any allow",
            "egress health any allow",
            "egress host any allow",
            "egress ingress any allow",
            "egress init any allow",
            "egress kube-apiserver any allow",
            "egress remote-node any allow",
            "egress unmanaged any allow",
            "egress web any allow",
            OPEN_INGRESS,
        ],
    ),
    (
        "from-entities-remote-node-includes-kube-apiserver",
        CNP + "  ingress:\n  - fromEntities: [remote-node, health]\n",
        [
            OPEN_EGRESS,
            "ingress health any allow",
            HOST,
            "ingress kube-apiserver any allow",
            "ingress remote-node any allow",
        ],
    ),
    ("to-entities-all", CNP + "  egress:\n  - toEntities: [all]\n", [OPEN_EGRESS, OPEN_INGRESS]),
    (
        "from-entities-host-ingress-kube-apiserver",
        CNP + "  egress:\n  - toEntities: [host, kube-apiserver, ingress]\n",
        [
            "egress host any allow",
            "egress ingress any allow",
            "egress kube-apiserver any allow",
            OPEN_INGRESS,
        ],
    ),
    (
        "to-cidr",
        CNP + "  egress:\n  - toCIDR: [192.168.0.0/16, 172.16.0.1]\n",
        ["egress cidr:172.16.0.1/32 any allow", "egress cidr:192.168.0.0/16 any allow", OPEN_INGRESS],
    ),
    (
        "to-cidr-set-except-not-selected",
        CNP + "  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n",
        ["egress cidr:10.0.0.0/8 any allow", OPEN_INGRESS],
    ),
    (
        "to-cidr-selects-nested-cidr-identities",
        CNP
        + "  egress:\n  - toCIDR: [10.0.0.0/8]\n  - toCIDR: [10.1.0.0/16]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        [
            "egress cidr:10.0.0.0/8 any allow",
            "egress cidr:10.1.0.0/16 any allow",
            "egress cidr:10.1.0.0/16 tcp/80 allow",
            OPEN_INGRESS,
        ],
    ),
    (
        "to-cidr-zero-is-world",
        CNP + "  egress:\n  - toCIDR: [0.0.0.0/0]\n",
        ["egress world any allow", "egress world-ipv4 any allow", OPEN_INGRESS],
    ),
    (
        "from-cidr-set-ingress",
        CNP
        + "  ingress:\n  - fromCIDRSet: [{cidr: 10.0.0.0/8}]\n    toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n",
        [OPEN_EGRESS, "ingress cidr:10.0.0.0/8 tcp/443 allow", HOST],
    ),
    (
        "deny-wins-same-key",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress fe any deny", HOST],
    ),
    (
        "deny-l3-removes-narrower-allow",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"
        "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress fe any deny", HOST],
    ),
    (
        "deny-l4-only-beats-l3l4-allow",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"
        "  ingressDeny:\n  - toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        # The host's allow-localhost entry overlaps the deny too: port 80 from the host is denied.
        [OPEN_EGRESS, "ingress any tcp/80 deny", HOST, "ingress host tcp/80 deny"],
    ),
    (
        "deny-l3-beats-l4-only-allow-via-overlap-entry",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"
        "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress any tcp/80 allow", "ingress fe any deny", "ingress fe tcp/80 deny", HOST],
    ),
    (
        "deny-port-inside-allowed-range",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '8000', endPort: 8007, protocol: TCP}]}]\n"
        "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '8004', protocol: TCP}]}]\n",
        [OPEN_EGRESS, "ingress fe tcp/8000-8007 allow", "ingress fe tcp/8004 deny", HOST],
    ),
    (
        "deny-from-host-beats-allow-localhost",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n  ingressDeny:\n  - fromEntities: [host]\n",
        [OPEN_EGRESS, "ingress fe any allow", "ingress host any deny"],
    ),
    (
        "deny-only-section-still-default-deny",
        CNP + "  egressDeny:\n  - toEndpoints: [{matchLabels: {app: db}}]\n",
        ["egress db any deny", OPEN_INGRESS],
    ),
    ("empty-ingress-rule-is-default-deny", CNP + "  ingress: [{}]\n", [OPEN_EGRESS, HOST]),
    (
        "enable-default-deny-false",
        CNP
        + "  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, OPEN_INGRESS, "ingress fe any allow"],
    ),
    (
        "egress-default-deny",
        CNP
        + "  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]\n",
        ["egress db tcp/5432 allow", OPEN_INGRESS],
    ),
    (
        "auth-required-l3",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n",
        [OPEN_EGRESS, "ingress fe any allow auth=spire", HOST],
    ),
    (
        "auth-test-always-fail",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: test-always-fail}\n",
        [OPEN_EGRESS, "ingress fe any allow auth=test-always-fail", HOST],
    ),
    (
        "auth-inherited-by-narrower-and-overlapping-entries",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n"
        "  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"
        "  - toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n",
        [
            OPEN_EGRESS,
            "ingress any tcp/443 allow",
            "ingress fe any allow auth=spire",
            "ingress fe tcp/443 allow auth=spire",
            "ingress fe tcp/80 allow auth=spire",
            HOST,
        ],
    ),
    (
        "auth-explicitly-disabled-not-inherited",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n"
        "  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"
        "    authentication: {mode: disabled}\n",
        [OPEN_EGRESS, "ingress fe any allow auth=spire", "ingress fe tcp/80 allow", HOST],
    ),
    (
        "auth-cleared-by-deny",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    authentication: {mode: required}\n"
        "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n",
        [OPEN_EGRESS, "ingress fe any deny", HOST],
    ),
    (
        "l7-http-redirects-to-proxy",
        CNP
        + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n    toPorts:\n    - ports: [{port: '80'}]\n"
        "      rules: {http: [{method: GET, path: /api}]}\n",
        [
            OPEN_EGRESS,
            "ingress fe tcp/80 allow proxy=10001",
            HOST,
            "l7 ingress fe tcp/80 http method=GET path=/api",
        ],
    ),
    (
        "l7-merged-with-plain-l4-adds-match-all",
        CNP
        + "  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts:\n    - ports: [{port: '80', protocol: TCP}]\n"
        "      rules: {http: [{method: GET, headers: ['X-Token: a']}]}\n"
        "  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        [
            "egress db tcp/80 allow proxy=10002",
            OPEN_INGRESS,
            "l7 egress db tcp/80 http *",
            "l7 egress db tcp/80 http method=GET header=X-Token: a",
        ],
    ),
    (
        "specs-list-combines-rules",
        "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspecs:\n"
        "- endpointSelector: {matchLabels: {app: web}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: fe}}]}]\n"
        "- endpointSelector: {matchLabels: {app: web}}\n  egress: [{toEndpoints: [{matchLabels: {app: db}}]}]\n",
        ["egress db any allow", "ingress fe any allow", HOST],
    ),
    (
        "two-policies-union",
        CNP
        + "  ingress: [{fromEndpoints: [{matchLabels: {app: fe}}]}]\n---\n"
        + CNP.replace("name: p", "name: q")
        + "  ingress: [{fromEndpoints: [{matchLabels: {app: db}}]}]\n",
        [OPEN_EGRESS, "ingress db any allow", "ingress fe any allow", HOST],
    ),
    (
        "knp-pod-selector-and-ports",
        KNP + "  ingress:\n  - from: [{podSelector: {matchLabels: {app: fe}}}]\n    ports: [{port: 80}]\n",
        [OPEN_EGRESS, "ingress fe tcp/80 allow", HOST],
    ),
    (
        "knp-namespace-selector",
        KNP + "  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n",
        [OPEN_EGRESS, "ingress dev/fe any allow", HOST],
    ),
    (
        "knp-pod-and-namespace-selector-combined",
        KNP
        + "  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: fe}}}]\n",
        [OPEN_EGRESS, "ingress fe any allow", HOST],
    ),
    (
        "knp-empty-namespace-selector-is-all-pods-not-world",
        KNP + "  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: fe}}}]\n",
        [OPEN_EGRESS, "ingress dev/fe any allow", "ingress fe any allow", HOST],
    ),
    (
        "knp-ipblock-except",
        KNP
        + "  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n"
        "    ports: [{port: 5000, endPort: 5001, protocol: UDP}]\n",
        ["egress cidr:10.0.0.0/8 udp/5000-5001 allow", OPEN_INGRESS],
    ),
    ("knp-policy-types-egress-only-no-rules", KNP + "  policyTypes: [Egress]\n", [OPEN_INGRESS]),
    (
        "knp-policy-types-absent-egress-present",
        KNP + "  egress:\n  - to: [{podSelector: {matchLabels: {app: db}}}]\n",
        ["egress db any allow", HOST],
    ),
    ("knp-policy-types-absent-no-rules-is-ingress-deny", KNP, [OPEN_EGRESS, HOST]),
    (
        "knp-rules-of-unlisted-type-ignored",
        KNP + "  policyTypes: [Egress]\n  ingress: [{}]\n  egress: [{}]\n",
        [OPEN_EGRESS, OPEN_INGRESS],
    ),
    (
        "knp-empty-rule-allows-all",
        KNP + "  ingress: [{}]\n",
        [OPEN_EGRESS, OPEN_INGRESS, HOST],
    ),
]


@pytest.mark.parametrize(("policies", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_feature(policies: str, expected: list[str]) -> None:
    assert lines(policies) == sorted(expected)


NAMED = Endpoint(key="prod/web", identity=1000, named_ports={"http": (6, 8080), "dns": (17, 53)})


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        (
            KNP + "  ingress:\n  - ports: [{port: http}, {port: dns, protocol: UDP}, {port: nope}]\n",
            [OPEN_EGRESS, "ingress any tcp/8080 allow", "ingress any udp/53 allow", HOST],
        ),
        (
            CNP + "  ingress:\n  - toPorts: [{ports: [{port: http, protocol: UDP}]}]\n",
            [OPEN_EGRESS, HOST],
        ),
    ],
    ids=["knp-named-ports-resolved-per-endpoint", "named-port-protocol-mismatch-allows-nothing"],
)
def test_named_ports(policies: str, expected: list[str]) -> None:
    assert lines(policies, NAMED) == sorted(expected)


def test_allow_localhost_can_be_disabled() -> None:
    assert lines(CNP + "  ingress: [{}]\n", allow_localhost=False) == [OPEN_EGRESS]


def test_proxy_ports_configurable() -> None:
    from nodemesh.policy.model import ProxyPorts

    got = lines(
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]\n",
        proxy_ports=ProxyPorts(ingress=15001, egress=15002),
    )
    assert "ingress any tcp/80 allow proxy=15001" in got
