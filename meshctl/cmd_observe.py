"""``nodemesh observe``: show flows like ``hubble observe``, from the JetStream stream FLOWS.

``--last N`` prints the last N flows that match the filters: the stream is read backwards in
growing windows (each window forward with a short-lived pull consumer) until N matches are found or
the stream's start is reached. ``--follow`` then continues with an ordered consumer from the next
sequence, so no flow is lost or printed twice between the two phases.

Filters are Hubble's (:mod:`meshctl.flowfilter`). ``-o table`` prints TIMESTAMP, SOURCE,
DESTINATION, L7 INFO, TRAFFIC DIRECTION, VERDICT, TCP FLAGS; ``-o json`` one Flow per line, shaped
like Hubble's flow JSON.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from localcluster.layout import data_dir, load_cluster, load_credentials
from meshctl.flowfilter import FilterError, FlowFilter, build_filters, matches
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import decode
from nodemesh.errors import DecodeError, NodemeshError
from nodemesh.labels import RESERVED_NAMES
from nodemesh.messages.flow import Endpoint, Flow
from nodemesh.streams import STREAM_FLOWS

__all__ = ["format_row", "register", "render_table"]

HEADER = ["TIMESTAMP", "SOURCE", "DESTINATION", "L7 INFO", "TRAFFIC DIRECTION", "VERDICT", "TCP FLAGS"]
DROP_REASONS = {
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    181: "POLICY_DENY",
    189: "AUTH_REQUIRED",
}
_BATCH = 500


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("observe", help="show flows (like hubble observe)")
    p.add_argument("--last", type=int, default=None, help="last N matching flows (default 20; 0 with -f)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")
    rep: dict[str, Any] = {"action": "append", "default": []}
    for side in ("from-", "to-", ""):
        either = " (either side)" if not side else ""
        p.add_argument(f"--{side}pod", **rep, help=f"[ns/]pod-name prefix{either}")
        p.add_argument(f"--{side}service", **rep, help=f"[ns/]Service name prefix{either}")
        p.add_argument(f"--{side}label", **rep, help=f"key=value[,key2=value2] (k8s: optional){either}")
        p.add_argument(f"--{side}identity", **rep, help=f"numeric or reserved identity{either}")
        p.add_argument(f"--{side}ip", **rep, help=f"IP or CIDR{either}")
        p.add_argument(f"--{side}port", **rep, help=f"L4 port{either}")
    p.add_argument("-n", "--namespace", **rep, help="namespace (either side)")
    p.add_argument("--verdict", **rep, help="FORWARDED, DROPPED, …")
    p.add_argument("--protocol", **rep, help="tcp, udp, icmp, sctp")
    p.add_argument("-t", "--type", dest="types", **rep, help="drop, trace, policy-verdict, l7")
    p.add_argument("--traffic-direction", **rep, help="ingress or egress")
    p.add_argument("--node", **rep, help="only flows observed on this node")
    p.set_defaults(func=_observe)


def filters_from_args(args: argparse.Namespace) -> list[FlowFilter]:
    return build_filters(
        from_pod=args.from_pod, to_pod=args.to_pod, pod=args.pod, namespace=args.namespace,
        from_service=args.from_service, to_service=args.to_service, service=args.service,
        from_label=args.from_label, to_label=args.to_label, label=args.label,
        from_identity=args.from_identity, to_identity=args.to_identity, identity=args.identity,
        from_ip=args.from_ip, to_ip=args.to_ip, ip=args.ip,
        from_port=args.from_port, to_port=args.to_port, port=args.port,
        verdict=args.verdict, protocol=args.protocol, types=args.types,
        traffic_direction=args.traffic_direction, node=args.node,
    )  # fmt: skip


# --- formatting ------------------------------------------------------------------------------------
_FRACTION = re.compile(r"\.(\d+)")


def format_time(ts: str) -> str:
    """RFC 3339 (nanoseconds allowed) → ``Nov 26 22:04:57.123`` in UTC; unparsable → as is."""
    try:
        t = datetime.fromisoformat(_FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), ts, 1))
    except ValueError:
        return ts
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%b %d %H:%M:%S.%f")[:-3]


def _ports(flow: Flow) -> tuple[int, int]:
    l4 = flow.l4
    for part in (l4.tcp, l4.udp, l4.sctp) if l4 else ():
        if part is not None:
            return part.source_port, part.destination_port
    return 0, 0


def _endpoint(ep: Endpoint | None, ip: str, port: int) -> str:
    name = f"{ep.namespace}/{ep.pod_name}" if ep and ep.pod_name else ip or "?"
    if port:
        name += f":{port}"
    if ep is None or not ep.identity:
        return name
    reserved = RESERVED_NAMES.get(ep.identity)
    return f"{name} ({reserved})" if reserved else f"{name} (ID:{ep.identity})"


def _l7(flow: Flow) -> str:
    l7 = flow.l7
    if l7 is not None and l7.http is not None:
        h = l7.http
        if l7.type == "RESPONSE":
            return f"{h.protocol} {h.code} {l7.latency_ns // 1_000_000}ms ({h.method} {h.url})".strip()
        return f"{h.protocol} {h.method} {h.url}".strip()
    if flow.l4 is not None and flow.l4.icmpv4 is not None:
        return f"ICMPv4 type {flow.l4.icmpv4.type} code {flow.l4.icmpv4.code}"
    return flow.Summary if flow.Type == "L7" else ""


def _verdict(flow: Flow) -> str:
    v = flow.verdict
    reason = flow.drop_reason_desc or DROP_REASONS.get(flow.drop_reason, "")
    if not reason and flow.drop_reason:
        reason = str(flow.drop_reason)
    if reason:
        v += f" ({reason})"
    if flow.auth_type and flow.auth_type != "DISABLED":
        v += f" auth={flow.auth_type}"
    return v


def _tcp_flags(flow: Flow) -> str:
    tcp = flow.l4.tcp if flow.l4 else None
    if tcp is None or tcp.flags is None:
        return ""
    f = tcp.flags
    return ", ".join(n for n in ("SYN", "ACK", "PSH", "FIN", "RST", "URG") if getattr(f, n))


def format_row(flow: Flow) -> list[str]:
    sport, dport = _ports(flow)
    ip = flow.ip
    return [
        format_time(flow.time),
        _endpoint(flow.source, ip.source if ip else "", sport),
        _endpoint(flow.destination, ip.destination if ip else "", dport),
        _l7(flow),
        flow.traffic_direction,
        _verdict(flow),
        _tcp_flags(flow),
    ]


def render_table(rows: list[list[str]], widths: list[int] | None = None) -> tuple[list[str], list[int]]:
    """Lines aligned in columns (two spaces apart) and the widths used, for later rows to reuse."""
    w = list(widths or [len(h) for h in HEADER])
    for r in rows:
        w = [max(a, len(c)) for a, c in zip(w, r, strict=True)]
    lines = ["  ".join(c.ljust(n) for c, n in zip(r, w, strict=True)).rstrip() for r in rows]
    return lines, w


# --- reading the stream ----------------------------------------------------------------------------
class _Printer:
    def __init__(self, output: str, out: TextIO) -> None:
        self.output, self.out = output, out
        self.widths: list[int] | None = None

    def batch(self, flows: list[Flow], header: bool) -> None:
        if self.output == "json":
            for f in flows:
                self.out.write(msgspec.json.encode(f).decode() + "\n")
        else:
            rows = ([HEADER] if header else []) + [format_row(f) for f in flows]
            lines, self.widths = render_table(rows, self.widths)
            for line in lines:
                self.out.write(line + "\n")
        self.out.flush()


def _to_flow(subject: str, data: bytes, bad: list[int]) -> Flow | None:
    try:
        flow = decode(data, Flow, subject=subject)
    except DecodeError:
        bad[0] += 1
        return None
    if not flow.node_name:
        flow.node_name = subjects.untoken(subject.rsplit(".", 1)[-1])
    return flow


async def _read_range(
    js: Any, start: int, end: int, keep: Callable[[Flow], bool], bad: list[int]
) -> list[Flow]:
    """Matching flows with stream sequence in ``start..end``, oldest first."""
    cfg = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
    )
    psub = await js.pull_subscribe(subjects.FLOWS_ALL, stream=STREAM_FLOWS.name, config=cfg)
    out: list[Flow] = []
    try:
        seq = start - 1
        while seq < end:
            try:
                msgs = await psub.fetch(batch=min(_BATCH, end - seq), timeout=5)
            except NatsTimeout:
                break  # nothing more (messages aged out meanwhile)
            for m in msgs:
                seq = m.metadata.sequence.stream
                if seq > end:
                    break
                flow = _to_flow(m.subject, m.data, bad)
                if flow is not None and keep(flow):
                    out.append(flow)
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await psub.unsubscribe()
    return out


async def observe(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        allow = filters_from_args(args)
    except FilterError as e:
        raise NodemeshError(str(e)) from e
    last = args.last if args.last is not None else (0 if args.follow else 20)
    if last < 0:
        raise NodemeshError("--last must be 0 or more")
    explicit = getattr(args, "sub_data_dir", None) or args.data_dir
    cluster = load_cluster(str(data_dir(explicit)))
    user, password = load_credentials(str(data_dir(explicit)), "admin")
    bus = await connect(cluster.nats_url, name="nodemesh-observe", user=user, password=password, max_wait=10)
    printer = _Printer(args.output, out or sys.stdout)
    bad = [0]

    def keep(f: Flow) -> bool:
        return matches(f, allow)

    try:
        js = bus.js
        try:
            info = await js.stream_info(STREAM_FLOWS.name)
        except NotFoundError as e:
            raise NodemeshError("no FLOWS stream yet: is the cluster up (nodemesh up)?") from e
        first, end = info.state.first_seq, info.state.last_seq
        found: list[Flow] = []
        # Unfiltered, the last N messages are the answer; filtered, start wider and grow 4x.
        window = max(4 * last, 512) if allow else last
        while last and len(found) < last and end >= first and end > 0:
            start = max(first, end - window + 1)
            found = await _read_range(js, start, end, keep, bad) + found
            end, window = start - 1, window * 4
        printer.batch(found[-last:] if last else [], header=True)
        if args.follow:
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=info.state.last_seq + 1
            )
            sub = await js.subscribe(
                subjects.FLOWS_ALL, stream=STREAM_FLOWS.name, ordered_consumer=True, config=cfg
            )
            async for m in sub.messages:
                flow = _to_flow(m.subject, m.data, bad)
                if flow is not None and keep(flow):
                    printer.batch([flow], header=False)
    finally:
        if bad[0]:
            print(f"warning: skipped {bad[0]} undecodable flow message(s)", file=sys.stderr)
        await bus.nc.close()
    return 0


def _observe(args: argparse.Namespace) -> Any:
    return observe(args)
