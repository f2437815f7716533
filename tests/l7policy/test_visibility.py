"""L7 visibility without enforcement (``policy.cilium.io/proxy-visibility``), pure parts: the
annotation, the policy-map entries it adds (no verdict changes), the endpoint's lookup flags, and the
listener the xds translation builds for an annotated pod with no policy at all."""

from __future__ import annotations

from typing import Any

from nodemesh.policy.model import EndpointPolicy, HTTPRule, PolicyKey, PolicyValue, ProxyPorts
from nodemesh.policy.visibility import (
    ANNOTATION,
    Visibility,
    parse_visibility,
    pod_visibility,
    with_visibility,
)
from services.datapath.endpoints import endpoint_flags
from services.datapath.maps import EP_ENFORCE_EGRESS, EP_ENFORCE_INGRESS
from services.xds.translate import LISTENER
from tests.l7policy.test_l7policy_translate import BASE, as_dict, pod, run

ING, EG, TCP = 0, 1, 6
PORTS = ProxyPorts()


def test_the_annotation_cilium_format_and_its_errors() -> None:
    got, errors = parse_visibility("<Ingress/8080/TCP/HTTP>, <egress/80/tcp/http>,<Ingress/8080/TCP/HTTP>")
    assert got == (Visibility(ING, 8080), Visibility(EG, 80)) and errors == ()
    got, errors = parse_visibility("<Ingress/53/UDP/DNS>,<Ingress/99999/TCP/HTTP>,junk,<Egress/443/TCP/HTTP>")
    assert got == (Visibility(EG, 443),)
    assert len(errors) == 3 and "only TCP/HTTP" in errors[0] and "out of range" in errors[1]
    assert pod_visibility({"metadata": {}}) == ((), ())
    assert pod_visibility({"metadata": {"annotations": {ANNOTATION: 5}}})[1]
    assert pod_visibility("not a pod") == ((), ())


def test_unenforced_direction_redirects_the_port_and_allows_everything_else() -> None:
    base = EndpointPolicy(entries={PolicyKey(0, ING): PolicyValue(), PolicyKey(0, EG): PolicyValue()})
    out = with_visibility(base, (Visibility(ING, 8080),), PORTS)
    key = PolicyKey(0, ING, TCP, 8080, 16)
    assert out.entries == {**base.entries, key: PolicyValue(proxy_port=PORTS.ingress)}
    assert out.l7 == {key: (HTTPRule(),)}  # match-all: Envoy allows every request
    assert not out.ingress_enforced  # status: nothing is default-deny
    # the programs must look the direction up (the allow-all entry answers other ports)
    assert endpoint_flags(out) == EP_ENFORCE_INGRESS
    assert endpoint_flags(base) == 0
    # an endpoint the engine has no policy for yet still keeps allowing everything
    bare = with_visibility(EndpointPolicy(), (Visibility(EG, 80),), PORTS)
    assert bare.entries[PolicyKey(0, EG)] == PolicyValue()
    assert endpoint_flags(bare) == EP_ENFORCE_EGRESS


def test_enforced_direction_redirects_only_what_is_allowed() -> None:
    l3_only, l4, denied, wide_deny, has_rules = 1001, 1002, 1003, 1004, 1005
    entries = {
        PolicyKey(0, EG): PolicyValue(),
        PolicyKey(l3_only, ING): PolicyValue(auth_type=1),
        PolicyKey(l4, ING, TCP, 8080, 16): PolicyValue(),
        PolicyKey(denied, ING, TCP, 8080, 16): PolicyValue(deny=True),
        PolicyKey(wide_deny, ING): PolicyValue(),
        PolicyKey(wide_deny, ING, TCP, 8064, 11): PolicyValue(deny=True),
        PolicyKey(has_rules, ING, TCP, 8080, 16): PolicyValue(proxy_port=PORTS.ingress),
        PolicyKey(l4, ING, TCP, 9090, 16): PolicyValue(),
    }
    rules = {PolicyKey(has_rules, ING, TCP, 8080, 16): (HTTPRule(method="GET"),)}
    base = EndpointPolicy(ingress_enforced=True, entries=entries, l7=rules)
    out = with_visibility(base, (Visibility(ING, 8080),), PORTS)
    added = {k: v for k, v in out.entries.items() if base.entries.get(k) != v}
    assert added == {
        PolicyKey(l3_only, ING, TCP, 8080, 16): PolicyValue(auth_type=1, proxy_port=PORTS.ingress),
        PolicyKey(l4, ING, TCP, 8080, 16): PolicyValue(proxy_port=PORTS.ingress),
    }
    # nothing new allowed; denies (exact or wider) untouched; existing HTTP rules kept
    assert set(base.entries) <= set(out.entries)
    assert out.l7[PolicyKey(has_rules, ING, TCP, 8080, 16)] == (HTTPRule(method="GET"),)
    assert PolicyKey(wide_deny, ING, TCP, 8080, 16) not in out.entries
    assert with_visibility(base, (), PORTS) is base


def annotated(name: str, ip: str, node: str, value: str) -> dict[str, Any]:
    p = pod(name, ip, node)
    p["metadata"]["annotations"] = {ANNOTATION: value}
    return p


def test_an_annotated_pod_without_policy_gets_an_allow_all_listener_chain() -> None:
    b = annotated("b", "10.1.1.3", "n1", "<Ingress/8080/TCP/HTTP>")
    t = run(*[o for o in BASE if o["metadata"].get("name") != "b"], b)
    lst = as_dict(t.for_node("n1")[LISTENER]["nodemesh-l7-policy-ingress"])
    (chain,) = lst["filter_chains"]
    assert chain["filter_chain_match"]["prefix_ranges"] == [{"address_prefix": "10.1.1.3", "prefix_len": 32}]
    hcm = chain["filters"][0]["typed_config"]
    (policy,) = hcm["http_filters"][0]["typed_config"]["rules"]["policies"].values()
    assert policy["principals"] == [{"any": True}]  # anyone
    assert policy["permissions"] == [
        {"and_rules": {"rules": [{"destination_port_range": {"start": 8080, "end": 8081}}]}}
    ]
    # without the annotation (and without HTTP rules) nobody gets a listener
    assert LISTENER not in run(*BASE).for_node("n1") or not any(
        "l7-policy" in n for n in run(*BASE).for_node("n1")[LISTENER]
    )
