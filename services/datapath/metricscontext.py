"""Hubble's metric context options (pure): which source/destination labels flow metrics carry.

The option string is Hubble's, options separated by ``;``::

    sourceContext=workload|reserved-identity;destinationContext=workload|reserved-identity;
    labelsContext=source_namespace,source_workload,destination_namespace,destination_workload,traffic_direction

- ``labelsContext``: separate labels, in Hubble's fixed order: ``source_pod``, ``source_namespace``,
  ``source_workload``, ``source_app``, ``destination_pod``, ``destination_namespace``,
  ``destination_workload``, ``destination_app``, ``traffic_direction`` (lower case, ``unknown``).
- ``sourceContext``/``destinationContext``: one label ``source``/``destination``, the first
  non-empty of the ``|``-separated identifiers: ``namespace``, ``identity`` (all labels),
  ``pod`` (``ns/pod``), ``pod-short`` (``ns/`` pod name without its generated suffixes), ``ip``,
  ``dns`` (names are not known: empty), ``reserved-identity`` (``reserved:world``, …),
  ``workload`` (``ns/workload``), ``workload-name``, ``app``.

Workloads are the flow's ``workloads`` (from the pod name, nodemesh.workload). ``app`` is the first
of the ``app.kubernetes.io/name``, ``k8s-app`` and ``app`` pod labels, as in Hubble.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from nodemesh.messages.flow import Endpoint, Flow
from nodemesh.workload import pod_workload

__all__ = ["DEFAULT_CONTEXT", "LABELS", "ContextOptions", "parse_context"]

#: Hubble's labelsContext labels, in the order their values follow.
LABELS = (
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_app",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_app",
    "traffic_direction",
)
#: What the datapath's metrics carry unless configured otherwise (DatapathConfig.hubble_metrics_context):
#: the labels Cilium's "Hubble L7 HTTP Metrics by Workload" dashboard selects on, and source/destination
#: as ``namespace/workload`` (a pod of no controller: ``namespace/pod``; else the reserved identity),
#: bounded by the number of workloads.
DEFAULT_CONTEXT = (
    "sourceContext=workload|pod|reserved-identity;destinationContext=workload|pod|reserved-identity;"
    "labelsContext=source_namespace,source_workload,source_app,"
    "destination_namespace,destination_workload,destination_app,traffic_direction"
)
_APP_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app=")
_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")


def _app(ep: Endpoint | None) -> str:
    if ep is None:
        return ""
    for prefix in _APP_LABELS:
        for lbl in ep.labels:
            if lbl.startswith(prefix) and lbl[len(prefix) :]:
                return lbl[len(prefix) :]
    return ""


def _workload_name(ep: Endpoint | None) -> str:
    if ep is None:
        return ""
    if ep.workloads:
        return ep.workloads[0].name
    w = pod_workload(ep.pod_name)  # a flow whose producer left workloads out: the same rule
    return w.name if w is not None else ""


def _in_ns(ep: Endpoint, name: str) -> str:
    return f"{ep.namespace}/{name}" if ep.namespace else name


def _reserved(ep: Endpoint | None) -> str:
    if ep is None:
        return ""
    if "reserved:kube-apiserver" in ep.labels:
        return "reserved:kube-apiserver"
    return next((lbl for lbl in ep.labels if lbl.startswith("reserved:")), "")


def _identifier(name: str, source: bool) -> Callable[[Flow], str]:
    def side(f: Flow) -> Endpoint | None:
        return f.source if source else f.destination

    def ip(f: Flow) -> str:
        return "" if f.ip is None else f.ip.source if source else f.ip.destination

    def pod(f: Flow) -> str:
        ep = side(f)
        return _in_ns(ep, ep.pod_name) if ep is not None and ep.pod_name else ""

    def pod_short(f: Flow) -> str:
        ep = side(f)
        return _in_ns(ep, _SHORT_POD.sub(r"\1", ep.pod_name)) if ep is not None and ep.pod_name else ""

    def workload(f: Flow) -> str:
        ep = side(f)
        w = _workload_name(ep)
        return _in_ns(ep, w) if ep is not None and w else ""

    table: dict[str, Callable[[Flow], str]] = {
        "namespace": lambda f: (side(f) or Endpoint()).namespace,
        "identity": lambda f: ",".join((side(f) or Endpoint()).labels),
        "pod": pod,
        "pod-short": pod_short,
        "ip": ip,
        "dns": lambda f: "",
        "reserved-identity": lambda f: _reserved(side(f)),
        "workload": workload,
        "workload-name": lambda f: _workload_name(side(f)),
        "app": lambda f: _app(side(f)),
    }
    if name not in table:
        raise ValueError(f"unknown context {name!r} (one of {', '.join(table)})")
    return table[name]


def _label_value(label: str, f: Flow) -> str:
    source = label.startswith("source_")
    ep = f.source if source else f.destination
    what = label.removeprefix("source_").removeprefix("destination_")
    if label == "traffic_direction":
        return f.traffic_direction.lower() or "unknown"
    if what == "pod":
        return ep.pod_name if ep else ""
    if what == "namespace":
        return ep.namespace if ep else ""
    if what == "workload":
        return _workload_name(ep)
    return _app(ep)


@dataclass(frozen=True)
class ContextOptions:
    labels: tuple[str, ...] = ()
    source: tuple[Callable[[Flow], str], ...] = field(default=(), compare=False)
    destination: tuple[Callable[[Flow], str], ...] = field(default=(), compare=False)
    uses_ip: bool = False  # an ``ip`` identifier: label values depend on the flow's addresses

    def names(self) -> list[str]:
        """The label names, in the order :meth:`values` returns their values."""
        return [
            *self.labels,
            *(["source"] if self.source else []),
            *(["destination"] if self.destination else []),
        ]

    def values(self, f: Flow) -> list[str]:
        out = [_label_value(lbl, f) for lbl in self.labels]
        for ids in (self.source, self.destination):
            if ids:
                out.append(next((v for v in (fn(f) for fn in ids) if v), ""))
        return out


def parse_context(spec: str) -> ContextOptions:
    """Hubble's context options (see the module doc); raises ValueError naming what is wrong."""
    labels: tuple[str, ...] = ()
    source: tuple[Callable[[Flow], str], ...] = ()
    destination: tuple[Callable[[Flow], str], ...] = ()
    uses_ip = False
    for part in spec.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise ValueError(f"metrics context option {part!r} is not key=value")
        if key == "labelscontext":
            wanted = {v.strip() for v in value.split(",")}
            bad = sorted(wanted - set(LABELS))
            if bad:
                raise ValueError(
                    f"invalid labelsContext value: {', '.join(bad)} (one of {', '.join(LABELS)})"
                )
            labels = tuple(lbl for lbl in LABELS if lbl in wanted)
        elif key in ("sourcecontext", "destinationcontext"):
            ids = tuple(_identifier(v.strip(), key == "sourcecontext") for v in value.split("|"))
            uses_ip = uses_ip or "ip" in (v.strip() for v in value.split("|"))
            source, destination = (ids, destination) if key == "sourcecontext" else (source, ids)
        else:
            raise ValueError(
                f"unknown metrics context option {key!r} (sourceContext, destinationContext, labelsContext)"
            )
    return ContextOptions(labels=labels, source=source, destination=destination, uses_ip=uses_ip)
