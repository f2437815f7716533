# ruff: noqa: E501  (one YAML policy per table row reads better on long lines)
"""Invalid policies yield precise errors (path + reason), returned, never raised; the rest is kept."""

from __future__ import annotations

import pytest

from nodemesh.policy.model import PolicyRef
from nodemesh.policy.parse import parse_policy
from nodemesh.policy.resolve import resolve
from tests.datapath.policy_helpers import IDENTITIES, WEB, docs

CNP = "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n"
KNP = "kind: NetworkPolicy\nmetadata: {name: k, namespace: prod}\nspec:\n  podSelector: {}\n"

ERRORS = [
    (
        "port-not-a-port",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '8o!', protocol: TCP}]}]\n",
        'spec.ingress[0].toPorts[0].ports[0].port: "8o!" is not a port',
    ),
    (
        "port-out-of-range",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '70000'}]}]\n",
        'spec.ingress[0].toPorts[0].ports[0].port: "70000" is not a port',
    ),
    (
        "port-named-too-long",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: abcdefghijklmnopq}]}]\n",
        'spec.ingress[0].toPorts[0].ports[0].port: "abcdefghijklmnopq" is not a port',
    ),
    (
        "bad-protocol",
        CNP + "  egress:\n  - toPorts: [{ports: [{port: '80', protocol: QUIC}]}]\n",
        'spec.egress[0].toPorts[0].ports[0].protocol: "QUIC" is not one of TCP, UDP, SCTP, ICMP, ICMPV6, ANY',
    ),
    (
        "end-port-below-port",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '90', endPort: 80}]}]\n",
        "spec.ingress[0].toPorts[0].ports[0].endPort: 80 is below port 90",
    ),
    (
        "end-port-without-port",
        CNP + "  ingress:\n  - toPorts: [{ports: [{endPort: 80}]}]\n",
        "spec.ingress[0].toPorts[0].ports[0].endPort: needs a numeric port",
    ),
    (
        "bad-cidr",
        CNP + "  egress:\n  - toCIDR: [10.0.0.0/33]\n",
        'spec.egress[0].toCIDR[0]: "10.0.0.0/33" is not a CIDR',
    ),
    (
        "except-outside-cidr",
        CNP + "  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n",
        "spec.egress[0].toCIDRSet[0].except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8",
    ),
    (
        "unknown-entity",
        CNP + "  egress:\n  - toEntities: [moon]\n",
        "spec.egress[0].toEntities[0]: 'moon' is not one of all, world, cluster, host, remote-node, health, init, unmanaged, kube-apiserver, ingress",
    ),
    (
        "bad-operator",
        CNP + "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: Maybe}]}]\n",
        'spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: "Maybe" is not one of In, NotIn, Exists, DoesNotExist',
    ),
    (
        "in-without-values",
        CNP + "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]\n",
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: must not be empty for operator In",
    ),
    (
        "label-value-not-string",
        CNP + "  ingress:\n  - fromEndpoints: [{matchLabels: {tier: 1}}]\n",
        "spec.ingress[0].fromEndpoints[0].matchLabels.tier: 1 must be a string",
    ),
    (
        "bad-auth-mode",
        CNP + "  ingress:\n  - fromEntities: [all]\n    authentication: {mode: maybe}\n",
        "spec.ingress[0].authentication.mode: 'maybe' is not one of required, test-always-fail, disabled",
    ),
    (
        "auth-in-deny",
        CNP + "  ingressDeny:\n  - fromEntities: [all]\n    authentication: {mode: required}\n",
        "spec.ingressDeny[0].authentication: is not allowed in a deny rule",
    ),
    (
        "l7-in-deny",
        CNP + "  egressDeny:\n  - toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]\n",
        "spec.egressDeny[0].toPorts[0].rules: L7 rules are not allowed in a deny rule",
    ),
    (
        "l7-without-port",
        CNP + "  ingress:\n  - toPorts: [{rules: {http: [{}]}}]\n",
        "spec.ingress[0].toPorts[0].rules: L7 rules need a port",
    ),
    (
        "l7-on-udp",
        CNP + "  ingress:\n  - toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {http: [{}]}}]\n",
        "spec.ingress[0].toPorts[0].rules: L7 rules need TCP ports",
    ),
    (
        "l7-dns-unsupported",
        CNP + "  egress:\n  - toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchPattern: '*'}]}}]\n",
        "spec.egress[0].toPorts[0].rules.dns: is not supported by nodemesh (only http)",
    ),
    (
        "fqdn-unsupported",
        CNP + "  egress:\n  - toFQDNs: [{matchName: example.com}]\n",
        "spec.egress[0].toFQDNs: is not supported by nodemesh",
    ),
    (
        "icmps-with-toports",
        CNP + "  ingress:\n  - icmps: [{fields: [{type: 8}]}]\n    toPorts: [{ports: [{port: '80'}]}]\n",
        "spec.ingress[0]: toPorts and icmps cannot be used in the same rule",
    ),
    (
        "icmp-bad-type",
        CNP + "  ingress:\n  - icmps: [{fields: [{type: 300}]}]\n",
        "spec.ingress[0].icmps[0].fields[0].type: 300 is not an ICMP type",
    ),
    (
        "no-selector",
        "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  ingress: [{}]\n",
        "spec: exactly one of endpointSelector and nodeSelector is required",
    ),
    (
        "node-selector-in-cnp",
        "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  nodeSelector: {}\n",
        "spec.nodeSelector: is only allowed in a CiliumClusterwideNetworkPolicy",
    ),
    (
        "no-spec",
        "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\n",
        "spec: spec or specs is required",
    ),
    (
        "specs-index-in-path",
        "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: prod}\nspecs:\n- endpointSelector: {}\n- endpointSelector: {}\n  egress: [{toCIDR: [nope]}]\n",
        'specs[1].egress[0].toCIDR[0]: "nope" is not a CIDR',
    ),
    (
        "ingress-not-a-list",
        CNP + "  ingress: {fromEntities: [world]}\n",
        "spec.ingress: must be a list, not dict",
    ),
    (
        "knp-bad-policy-type",
        KNP + "  policyTypes: [Sideways]\n",
        "spec.policyTypes[0]: 'Sideways' is not Ingress or Egress",
    ),
    (
        "knp-ipblock-combined",
        KNP + "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
        "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector",
    ),
    (
        "knp-icmp-not-allowed",
        KNP + "  ingress:\n  - ports: [{protocol: ICMP}]\n",
        'spec.ingress[0].ports[0].protocol: "ICMP" is not one of TCP, UDP, SCTP',
    ),
    (
        "knp-empty-peer",
        KNP + "  egress:\n  - to: [{}]\n",
        "spec.egress[0].to[0]: one of podSelector, namespaceSelector or ipBlock is required",
    ),
    (
        "knp-no-pod-selector",
        "kind: NetworkPolicy\nmetadata: {name: k, namespace: prod}\nspec: {}\n",
        "spec.podSelector: is required",
    ),
    (
        "knp-ipblock-except-outside",
        KNP + "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]\n",
        "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/8 is not inside 10.0.0.0/8",
    ),
    ("not-a-policy", "kind: Pod\nmetadata: {name: x}\n", "kind: 'Pod' is not a policy kind"),
    (
        "no-name",
        "kind: CiliumNetworkPolicy\nmetadata: {namespace: prod}\nspec: {endpointSelector: {}}\n",
        "metadata.name: is required",
    ),
]


@pytest.mark.parametrize(("policy", "error"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_policy_reports_precise_error(policy: str, error: str) -> None:
    res = parse_policy(docs(policy)[0])
    assert res.policy is None
    assert error in [str(e) for e in res.errors]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        5,
        "text",
        [],
        {"kind": "CiliumNetworkPolicy", "metadata": "x", "spec": [1, 2]},
        {
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "a"},
            "spec": {"endpointSelector": {"matchLabels": [1]}},
        },
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "a"},
            "spec": {"podSelector": {}, "ingress": [{"from": 7, "ports": [None]}]},
        },
    ],
    ids=["none", "int", "string", "list", "garbage-shapes", "matchlabels-list", "knp-garbage"],
)
def test_garbage_never_raises(raw: object) -> None:
    res = parse_policy(raw if isinstance(raw, dict) else {"kind": "CiliumNetworkPolicy", "spec": raw})
    assert res.policy is None and res.errors


def test_invalid_policy_leaves_others_enforced() -> None:
    good = CNP + "  ingress:\n  - fromEndpoints: [{matchLabels: {app: fe}}]\n"
    bad = CNP.replace("name: p", "name: bad") + "  egress:\n  - toPorts: [{ports: [{port: '8o!'}]}]\n"
    res = resolve(docs(good) + docs(bad), [WEB], IDENTITIES)
    assert list(res.errors) == [PolicyRef("CiliumNetworkPolicy", "prod", "bad")]
    pol = res.policies["prod/web"]
    assert pol.ingress_enforced and not pol.egress_enforced  # the bad egress section is not applied


def test_valid_policy_has_no_errors() -> None:
    res = parse_policy(docs(CNP + "  ingress: [{fromEntities: [world]}]\n")[0])
    assert res.policy is not None and res.errors == ()
