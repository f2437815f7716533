"""The resolv.conf a local pod gets, by kubelet's rules (dnsPolicy, dnsConfig, host search domains)."""

from __future__ import annotations

from typing import Any

from services.datapath.pods.resolvconf import PodDns, pod_resolv_conf

HOST = """\
# host
search corp.example lab.example
nameserver 10.255.255.53
nameserver 10.255.255.54
options rotate
"""
DNS = PodDns("10.96.0.10", "cluster.local")


def pod(ns: str = "demo", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": ns}, "spec": {"containers": [{"name": "c"}], **spec}}


def test_cluster_first_is_what_kubelet_writes() -> None:
    assert pod_resolv_conf(pod(), DNS, "nameserver 10.255.255.53\n") == (
        "search demo.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )


def test_host_search_domains_follow_the_cluster_ones() -> None:
    text = pod_resolv_conf(pod("team", dnsPolicy="ClusterFirst"), PodDns("10.96.0.10", "k8s.test"), HOST)
    assert text is not None
    assert text.splitlines()[0] == "search team.svc.k8s.test svc.k8s.test k8s.test corp.example lab.example"
    assert "nameserver 10.96.0.10" in text and "10.255.255.53" not in text and "rotate" not in text


def test_default_policy_and_host_network_see_the_hosts_file() -> None:
    assert pod_resolv_conf(pod(dnsPolicy="Default"), DNS, HOST) is None
    assert pod_resolv_conf(pod(hostNetwork=True), DNS, HOST) is None
    with_host_net = pod_resolv_conf(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), DNS, HOST)
    assert with_host_net is not None and "nameserver 10.96.0.10" in with_host_net


def test_no_cluster_dns_falls_back_to_the_host() -> None:
    assert pod_resolv_conf(pod(), PodDns("", "cluster.local"), HOST) is None


def test_dns_config_is_merged() -> None:
    cfg = {
        "nameservers": ["192.0.2.1", "10.96.0.10", "192.0.2.2", "192.0.2.3"],
        "searches": ["extra.example", "svc.cluster.local"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": 7}],
    }
    text = pod_resolv_conf(pod(dnsConfig=cfg), DNS, "")
    assert text == (
        "search demo.svc.cluster.local svc.cluster.local cluster.local extra.example\n"
        "nameserver 10.96.0.10\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n"  # at most 3
        "options ndots:2 edns0\n"
    )
    default = pod_resolv_conf(
        pod(dnsPolicy="Default", dnsConfig={"options": [{"name": "ndots", "value": "1"}]}), DNS, HOST
    )
    assert default == (
        "search corp.example lab.example\nnameserver 10.255.255.53\nnameserver 10.255.255.54\n"
        "options rotate ndots:1\n"
    )
    only = pod_resolv_conf(pod(dnsPolicy="None", dnsConfig={"nameservers": ["192.0.2.9"]}), DNS, HOST)
    assert only == "nameserver 192.0.2.9\n"


def test_malformed_pods_do_not_raise() -> None:
    for bad in (
        {},
        {"spec": "x"},
        {"metadata": 5, "spec": {"dnsConfig": "x"}},
        pod(dnsConfig={"options": [3, {}]}),
    ):
        text = pod_resolv_conf(bad, DNS, HOST)
        assert text is not None and "nameserver 10.96.0.10" in text
