"""Pure cores: Cilium's label filter and sanitizing, numbering, endpoints from objects (no I/O)."""

from __future__ import annotations

import pytest

from nodemesh.labels import (
    RESERVED,
    LabelError,
    canonical,
    filter_labels,
    id_range,
    label_hash,
    pod_labels,
    validate_labels,
)
from services.identity.endpoints import node_entries, node_info, pod_endpoint


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("app", True),
        ("tier", True),
        ("app.kubernetes.io/name", True),  # include beats the kubernetes.io ignore
        ("io.kubernetes.pod.namespace", True),
        ("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", True),
        ("io.cilium.k8s.policy.serviceaccount", True),
        ("io.cilium.k8s.policy.cluster", True),
        ("pod-template-hash", False),
        ("controller-revision-hash", False),
        ("pod-template-generation", False),
        ("statefulset.kubernetes.io/pod-name", False),
        ("apps.kubernetes.io/pod-index", False),
        ("batch.kubernetes.io/job-completion-index", False),
        ("batch.kubernetes.io/controller-uid", False),
        ("controller-uid", False),
        ("io.kubernetes.container.name", False),
        ("kubernetes.io/hostname", False),
        ("beta.kubernetes.io/arch", False),
        ("k8s.io/cluster-service", False),
        ("annotation.foo", False),
        ("etcd_node", False),
    ],
)
def test_cilium_default_label_filter(key: str, kept: bool) -> None:
    assert (key in filter_labels({key: "v"})) is kept


def test_pod_labels_like_cilium_and_replicas_share_them() -> None:
    ns = {"metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "env": "prod"}}}

    def pod(name: str, hash_: str) -> dict[str, object]:
        return {
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": hash_},
            },
            "spec": {"serviceAccountName": "web-sa"},
        }

    a = pod_labels(pod("web-abc", "abc"), ns, "east")
    assert a == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.env=prod",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
        "k8s:io.cilium.k8s.policy.cluster=east",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
        "k8s:io.kubernetes.pod.namespace=shop",
    ]
    assert pod_labels(pod("web-xyz", "xyz"), ns, "east") == a
    assert label_hash(a) == label_hash(list(reversed(a)))
    assert canonical(["k8s:b=2", "k8s:a=1"]) == "k8s:a=1;k8s:b=2;"


def test_invalid_labels_are_refused() -> None:
    with pytest.raises(LabelError, match="characters"):
        validate_labels(["k8s:a=" + "x" * 2000])
    with pytest.raises(LabelError, match="source:key=value"):
        validate_labels(["justakey"])
    with pytest.raises(LabelError, match="source:key=value"):
        validate_labels(["k8s:a=b;k8s:c=d"])  # would forge a second label in the canonical key
    with pytest.raises(LabelError, match="reserved"):
        validate_labels(["reserved:host="])
    with pytest.raises(LabelError, match="max"):
        validate_labels([f"k8s:l{i}=v" for i in range(300)])
    bad_pod = {"metadata": {"name": "p", "namespace": "d", "labels": {"a": "x;k8s:b=y"}}}
    with pytest.raises(LabelError):
        pod_labels(bad_pod, {"metadata": {"name": "d"}}, "default")


def test_numbering() -> None:
    assert sorted(RESERVED) == list(range(12))
    assert RESERVED[6] == ("reserved:remote-node",) and RESERVED[7] == (
        "reserved:kube-apiserver",
        "reserved:remote-node",
    )
    assert id_range(0) == (256, 65535)
    assert id_range(3) == (3 << 16, (4 << 16) - 1)
    with pytest.raises(ValueError):
        id_range(256)


def test_endpoints_from_objects() -> None:
    base = {"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}}
    assert pod_endpoint({**base, "status": {"podIP": "10.0.0.1"}}).ips == ("10.0.0.1",)  # type: ignore[union-attr]
    dual = pod_endpoint(
        {**base, "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}
    )
    assert dual is not None and dual.ips == ("10.0.0.1", "fd00::1") and dual.ref == "n1/d/p"
    assert pod_endpoint({**base, "status": {}}) is None  # no IP yet
    assert pod_endpoint({**base, "status": {"podIP": "not-an-ip"}}) is None
    assert pod_endpoint({**base, "status": {"podIP": "10.0.0.1", "phase": "Succeeded"}}) is None
    host = {
        "metadata": base["metadata"],
        "spec": {"nodeName": "n1", "hostNetwork": True},
        "status": {"podIP": "1.2.3.4"},
    }
    assert pod_endpoint(host) is None
    assert (
        pod_endpoint({"metadata": base["metadata"], "status": {"podIP": "10.0.0.1"}}) is None
    )  # unscheduled
    node = {
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.50.1"},
                {"type": "InternalIP", "address": "fd00::5"},
            ]
        },
    }
    info = node_info(node)
    assert info is not None and (info.address, info.pod_cidr) == ("127.0.50.1", "10.244.1.0/24")
    entries = node_entries(node)
    assert [(e.ip, e.identity, e.prefix_len) for e in entries] == [("127.0.50.1", 6, 32), ("fd00::5", 6, 128)]
    assert node_info({"metadata": {"name": "n2"}, "status": {}}) is None
