"""Hubble's flow metrics, from the flows a node makes (L3/L4 from the ring buffer, L7 from Envoy).

One instance per datapath registry, fed every flow the node publishes — as Hubble's handlers are fed
every flow its observer sees:

| metric | labels (+ the context labels) | counted |
|---|---|---|
| ``hubble_flows_processed_total`` | ``protocol``, ``type``, ``subtype``, ``verdict`` | every flow |
| ``hubble_drop_total`` | ``reason``, ``protocol`` | every DROPPED flow |
| ``hubble_tcp_flags_total`` | ``flag``, ``family`` | forwarded L3/L4 flows with SYN, SYN-ACK, FIN or RST |

``type`` is ``Trace``/``Drop``/``PolicyVerdict``/``L7`` (``Unknown`` else), ``subtype`` the trace's
observation point (``to-endpoint``, ``from-endpoint``, ``to-proxy``) or ``HTTP`` for L7, ``protocol``
``TCP``/``UDP``/``ICMPv4``/``SCTP``, ``HTTP`` for L7. The HTTP metrics (accesslog/metrics.py) use
the same context options. Context labels: services/datapath/metricscontext.py.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from nodemesh.messages.flow import Endpoint, Flow
from services.datapath.metricscontext import DEFAULT_CONTEXT, ContextOptions, parse_context

__all__ = ["FlowMetrics", "flow_protocol"]

_CACHE_SIZE = 8192
_TYPES = {1: "Drop", 4: "Trace", 5: "PolicyVerdict", 129: "L7"}
_TRACE_SUBTYPES = {"TO_ENDPOINT": "to-endpoint", "TO_PROXY": "to-proxy", "FROM_ENDPOINT": "from-endpoint"}


def flow_protocol(f: Flow) -> str:
    """Hubble's ``protocol`` label: the L7 protocol for L7 flows, else the L4 one."""
    if f.l7 is not None:
        return "HTTP" if f.l7.http is not None else ""
    l4 = f.l4
    if l4 is None:
        return ""
    if l4.tcp is not None:
        return "TCP"
    if l4.udp is not None:
        return "UDP"
    if l4.icmpv4 is not None:
        return "ICMPv4"
    return "SCTP" if l4.sctp is not None else ""


def _tcp_flag(f: Flow) -> str:
    if f.verdict not in ("FORWARDED", "REDIRECTED"):  # packets that went on, as Hubble counts them
        return ""
    tcp = f.l4.tcp if f.l4 is not None and f.l7 is None else None
    flags = tcp.flags if tcp is not None else None
    if flags is None:
        return ""
    if flags.SYN:
        return "SYN-ACK" if flags.ACK else "SYN"
    if flags.FIN:
        return "FIN"
    return "RST" if flags.RST else ""


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry, context: ContextOptions | str = DEFAULT_CONTEXT) -> None:
        self.context = parse_context(context) if isinstance(context, str) else context
        ctx = self.context.names()
        self.flows = Counter(
            "hubble_flows_processed",
            "Total number of flows processed",
            ["protocol", "type", "subtype", "verdict", *ctx],
            registry=registry,
        )
        self.drops = Counter(
            "hubble_drop", "Number of drops", ["reason", "protocol", *ctx], registry=registry
        )
        self.tcp_flags = Counter(
            "hubble_tcp_flags", "TCP flag occurrences", ["flag", "family", *ctx], registry=registry
        )
        self._children: dict[tuple[Any, ...], list[Any]] = {}

    def observe(self, f: Flow) -> None:
        t = f.event_type.get("type", 0)
        kind = _TYPES.get(t, "Unknown")
        if kind == "L7" or f.Type == "L7":
            kind, subtype = "L7", "HTTP" if f.l7 is not None and f.l7.http is not None else ""
        elif kind == "Trace":
            subtype = _TRACE_SUBTYPES.get(f.trace_observation_point, f.trace_observation_point.lower())
        elif kind == "Unknown":
            subtype = str(t)
        else:
            subtype = ""
        proto = flow_protocol(f)
        dropped = f.verdict == "DROPPED" and kind != "L7"
        reason = (f.drop_reason_desc or str(f.drop_reason)) if dropped else ""
        flag = _tcp_flag(f)
        # The flows of one connection repeat the same label values: the counters' children are
        # memoized by what the labels are made of (bounded), not recomputed per flow.
        key = (_side(f.source), _side(f.destination), f.traffic_direction, self._ips(f), proto, kind, subtype,
               f.verdict, reason, flag)  # fmt: skip
        children = self._children.get(key)
        if children is None:
            ctx = self.context.values(f)
            children = [self.flows.labels(proto, kind, subtype, f.verdict, *ctx)]
            if dropped:
                children.append(self.drops.labels(reason, proto, *ctx))
            if flag:
                children.append(self.tcp_flags.labels(flag, (f.ip.ipVersion if f.ip else "") or "IPv4", *ctx))
            if len(self._children) >= _CACHE_SIZE:
                self._children.clear()
            self._children[key] = children
        for c in children:
            c.inc()

    def _ips(self, f: Flow) -> tuple[str, str]:
        return (f.ip.source, f.ip.destination) if self.context.uses_ip and f.ip is not None else ("", "")


def _side(ep: Endpoint | None) -> tuple[int, str, str, str]:
    """What an endpoint's context labels are made of: the identity stands for its labels."""
    if ep is None:
        return (0, "", "", "")
    return (ep.identity, ep.namespace, ep.pod_name, ep.workloads[0].name if ep.workloads else "")
