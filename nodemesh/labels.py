"""Which labels form a security identity, as Cilium computes them (pure; no I/O).

Pod labels become ``k8s:``-sourced labels plus ``io.kubernetes.pod.namespace``, the namespace's
labels as ``io.cilium.k8s.namespace.labels.<key>``, ``io.cilium.k8s.policy.serviceaccount`` and
``io.cilium.k8s.policy.cluster`` (Cilium ``SanitizePodLabels``), then Cilium's default label filter
(``pkg/labelsfilter/filter.go``) drops per-pod labels such as ``pod-template-hash`` so replicas share
one identity. The canonical form is Cilium's allocator key (sorted ``source:key=value;``), and its
SHA-256 names the ``labels.<hash>`` lock key in KV. Reserved identities 0-11 carry Cilium's numbers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_LEN",
    "RESERVED",
    "LabelError",
    "canonical",
    "endpoint_key",
    "filter_labels",
    "id_range",
    "is_pod_ref",
    "is_reserved",
    "label_hash",
    "parse_endpoint",
    "pod_labels",
    "validate_labels",
]

# --- reserved identities (pkg/identity/numericidentity.go) -----------------------------------
RESERVED: dict[int, tuple[str, ...]] = {
    0: ("reserved:unknown",),
    1: ("reserved:host",),
    2: ("reserved:world",),
    3: ("reserved:unmanaged",),
    4: ("reserved:health",),
    5: ("reserved:init",),
    6: ("reserved:remote-node",),
    7: ("reserved:kube-apiserver", "reserved:remote-node"),
    8: ("reserved:ingress",),
    9: ("reserved:world-ipv4",),
    10: ("reserved:world-ipv6",),
    11: ("reserved:encrypted-overlay",),
}
#: id → entity name ("host", "world", …): the one table every display and selector derives from.
RESERVED_NAMES: dict[int, str] = {n: labels[0].partition(":")[2] for n, labels in RESERVED.items() if n}
#: entity name → id, the inverse of :data:`RESERVED_NAMES`.
RESERVED_IDS: dict[str, int] = {v: k for k, v in RESERVED_NAMES.items()}
HOST = 1
WORLD = 2
REMOTE_NODE = 6
MIN_ALLOCATED = 256  # MinimalNumericIdentity
CLUSTER_ID_SHIFT = 16
MAX_CLUSTER_ID = 255

POD_NAMESPACE = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS = "io.cilium.k8s.namespace.labels"
SERVICE_ACCOUNT = "io.cilium.k8s.policy.serviceaccount"
CLUSTER = "io.cilium.k8s.policy.cluster"
SOURCE_K8S = "k8s"

MAX_LABELS = 256
MAX_LABEL_LEN = 1024  # source:key=value; namespace-label keys legitimately exceed Kubernetes' 317


class LabelError(ValueError):
    """Labels that cannot form an identity (too many, too long, malformed)."""


def is_reserved(n: int) -> bool:
    return 0 <= n < MIN_ALLOCATED


def id_range(cluster_id: int) -> tuple[int, int]:
    """Inclusive range of globally allocated identities for a cluster id (24 bits on the wire)."""
    if not 0 <= cluster_id <= MAX_CLUSTER_ID:
        raise ValueError(f"cluster id {cluster_id} outside 0..{MAX_CLUSTER_ID}")
    if cluster_id == 0:
        return MIN_ALLOCATED, (1 << CLUSTER_ID_SHIFT) - 1
    return cluster_id << CLUSTER_ID_SHIFT, ((cluster_id + 1) << CLUSTER_ID_SHIFT) - 1


# --- Cilium's default label filter --------------------------------------------------------------
@dataclass(frozen=True)
class _Prefix:
    pattern: str
    ignore: bool

    def match_len(self, key: str) -> int:
        # Cilium: regexp.MatchString (unanchored), the weight is the pattern's length.
        return len(self.pattern) if re.search(self.pattern, key) else 0


_DEFAULT_FILTER: tuple[_Prefix, ...] = tuple(
    _Prefix(p.lstrip("!"), p.startswith("!"))
    for p in (
        POD_NAMESPACE,
        NAMESPACE_LABELS,
        "app.kubernetes.io",
        "!io\\.kubernetes",
        "!kubernetes\\.io",
        "!statefulset\\.kubernetes\\.io/pod-name",
        "!apps\\.kubernetes\\.io/pod-index",
        "!batch\\.kubernetes\\.io/job-completion-index",
        "!batch\\.kubernetes\\.io/controller-uid",
        "!controller-uid",
        "!.*beta\\.kubernetes\\.io",
        "!k8s\\.io",
        "!pod-template-generation",
        "!pod-template-hash",
        "!controller-revision-hash",
        "!annotation.*",
        "!etcd_node",
    )
)


def _keep(key: str) -> bool:
    """Cilium's rule: keep if the longest include beats the shortest ignore, or nothing matched."""
    included = ignored = 0
    for p in _DEFAULT_FILTER:
        n = p.match_len(key)
        if not n:
            continue
        if p.ignore:
            ignored = n if ignored == 0 else min(ignored, n)
        else:
            included = max(included, n)
    return included > ignored or (included == 0 and ignored == 0)


def filter_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The identity-relevant subset of ``key → value`` labels."""
    return {k: v for k, v in labels.items() if _keep(k)}


# --- pod → labels ------------------------------------------------------------------------------
def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def pod_labels(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None, cluster: str) -> list[str]:
    """The sorted ``k8s:key=value`` identity labels of a pod (Cilium SanitizePodLabels + filter)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ns_name = str(meta.get("namespace") or "default")
    raw = _str_map(meta.get("labels"))
    ns_meta = (namespace or {}).get("metadata") or {}
    for k, v in _str_map(ns_meta.get("labels")).items():
        raw[f"{NAMESPACE_LABELS}.{k}"] = v
    raw[POD_NAMESPACE] = ns_name
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if sa:
        raw[SERVICE_ACCOUNT] = str(sa)
    if cluster:
        raw[CLUSTER] = cluster
    out = [f"{SOURCE_K8S}:{k}={v}" for k, v in filter_labels(raw).items()]
    validate_labels(out)
    return sorted(out)


_LABEL = re.compile(r"^[a-z0-9-]+:[^=;\s][^=;]*=[^;\n\r]*$")


def validate_labels(labels: Iterable[str]) -> None:
    """Refuse what cannot be a label set: too many, too long, no ``source:key=value`` shape."""
    items = list(labels)
    if not items:
        raise LabelError("empty label set")
    if len(items) > MAX_LABELS:
        raise LabelError(f"{len(items)} labels (max {MAX_LABELS})")
    for lbl in items:
        if len(lbl) > MAX_LABEL_LEN:
            raise LabelError(f"label {lbl[:40]!r}… is {len(lbl)} characters (max {MAX_LABEL_LEN})")
        if not _LABEL.match(lbl):
            raise LabelError(f"label {lbl[:80]!r} is not source:key=value")
        if lbl.startswith("reserved:"):
            raise LabelError(f"label {lbl!r}: reserved labels are not allocated")


def canonical(labels: Iterable[str]) -> str:
    """Cilium's allocator key: sorted ``source:key=value;`` (a missing ``=`` means an empty value)."""
    return "".join(f"{lbl if '=' in lbl else lbl + '='};" for lbl in sorted(set(labels)))


def label_hash(labels: Iterable[str]) -> str:
    return hashlib.sha256(canonical(labels).encode()).hexdigest()


# --- KV keys (bucket ``identities``) ---------------------------------------------------------------
# --- endpoints ---------------------------------------------------------------------------------
def endpoint_key(node: str, namespace: str, pod: str) -> str:
    """The reference an endpoint holds on its identity: ``<node>/<namespace>/<pod>``."""
    return f"{node}/{namespace}/{pod}"


EXTERNAL_PREFIX = "ext:"


def is_pod_ref(ref: str) -> bool:
    """A pod's reference (managed by the controller), not an ``ext:`` one taken via identity.allocate."""
    return not ref.startswith(EXTERNAL_PREFIX) and ref.count("/") == 2


def parse_endpoint(ref: str) -> tuple[str, str, str]:
    node, _, rest = ref.partition("/")
    ns, _, pod = rest.partition("/")
    return node, ns, pod
