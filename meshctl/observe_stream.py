"""``nodemesh observe`` at work: flows from the JetStream stream FLOWS, filtered and printed.

The flags are in :mod:`meshctl.cmd_observe` (imported with every CLI start, so it imports little);
this module, with NATS and the printers, is imported only when ``observe`` runs.

``--last N`` prints the last N flows that match the filters: the stream is read backwards in
growing windows (each window forward with a short-lived pull consumer) until N matches are found or
the stream's start is reached. ``--follow`` then continues with an ordered consumer from the next
sequence, so no flow is lost or printed twice between the two phases.

Filters are Hubble's (:mod:`meshctl.flowfilter`). ``-o table`` prints TIMESTAMP, SOURCE,
DESTINATION, L7 INFO, TRAFFIC DIRECTION, VERDICT, TCP FLAGS; ``-o json`` (= ``jsonpb``) one
``observer.GetFlowsResponse`` per line in protojson, ``-o compact`` and ``-o dict`` as the hubble CLI
prints them (:mod:`meshctl.hubbleprint`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from meshctl import hubbleprint
from meshctl.cmd_observe import filters_from_args, parse_time, time_bounds
from meshctl.flowfilter import FilterError, FlowFilter, matches
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.errors import DecodeError, NodemeshError
from nodemesh.labels import RESERVED_NAMES
from nodemesh.messages.flow import Endpoint, Flow
from nodemesh.streams import STREAM_FLOWS

__all__ = ["Query", "connect_admin", "follow", "format_row", "history", "observe", "render_table"]

HEADER = ["TIMESTAMP", "SOURCE", "DESTINATION", "L7 INFO", "TRAFFIC DIRECTION", "VERDICT", "TCP FLAGS"]
DROP_REASONS = {
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    181: "POLICY_DENY",
    189: "AUTH_REQUIRED",
}
_BATCH = 500


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
            return (
                f"{h.protocol} {h.code} {int(l7.latency_ns or 0) // 1_000_000}ms ({h.method} {h.url})".strip()
            )
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
    def __init__(self, output: str, out: TextIO, node_name: bool = False) -> None:
        self.output, self.out, self.node_name = output, out, node_name
        self.widths: list[int] | None = None
        self.printed = 0

    def batch(self, flows: list[Flow], header: bool) -> None:
        if self.output in ("json", "jsonpb"):
            for f in flows:
                self.out.write(hubbleprint.json_line(f) + "\n")
        elif self.output == "compact":
            for f in flows:
                self.out.write(hubbleprint.compact_line(f, self.node_name) + "\n")
        elif self.output == "dict":
            for f in flows:
                if self.printed:
                    self.out.write(hubbleprint.DICT_SEPARATOR + "\n")
                self.out.write("\n".join(hubbleprint.dict_block(f, self.node_name)) + "\n")
                self.printed += 1
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
    js: Any,
    start: int,
    end: int,
    keep: Callable[[Flow], bool],
    bad: list[int],
    since: datetime | None = None,
) -> list[Flow]:
    """Matching flows with stream sequence in ``start..end`` (from the first stored at or after
    ``since`` when given), oldest first."""
    cfg = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=None if since else start,
        opt_start_time=since,
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


def _in_time(ts: str, since: datetime | None, until: datetime | None) -> bool:
    try:
        t = parse_time(ts)
    except FilterError:
        return False
    return (since is None or t >= since) and (until is None or t <= until)


@dataclass
class Query:
    """What to read: Hubble's GetFlowsRequest (``observe``'s flags, or the Observer endpoint's request)."""

    allow: list[FlowFilter] = field(default_factory=list)
    deny: list[FlowFilter] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    last: int = 20  # 0 = none from history (with follow); ignored when ``unlimited``
    unlimited: bool = False  # every matching flow in range (--since without --last)
    bad: list[int] = field(default_factory=lambda: [0])  # undecodable messages skipped

    def keep(self, f: Flow) -> bool:
        if (self.since or self.until) and not _in_time(f.time, self.since, self.until):
            return False
        return matches(f, self.allow, self.deny)


async def history(js: Any, q: Query) -> tuple[list[Flow], int]:
    """The matching flows already in the stream, oldest first, and the last sequence looked at."""
    try:
        info = await js.stream_info(STREAM_FLOWS.name)
    except NotFoundError as e:
        raise NodemeshError("no FLOWS stream yet: is the cluster up (nodemesh up)?") from e
    first, end = info.state.first_seq, info.state.last_seq
    last_seq = end
    found: list[Flow] = []
    if q.since is not None and end > 0:  # forward from the first message stored since then
        found = await _read_range(js, first, end, q.keep, q.bad, since=q.since)
        return (found if q.unlimited else found[-q.last :] if q.last else []), last_seq
    last = q.last
    # Unfiltered, the last N messages are the answer; filtered, start wider and grow 4x.
    window = max(4 * last, 512) if q.allow or q.deny or q.until else last
    while last and len(found) < last and end >= first and end > 0:
        start = max(first, end - window + 1)
        found = await _read_range(js, start, end, q.keep, q.bad) + found
        end, window = start - 1, window * 4
    return (found[-last:] if last else []), last_seq


async def follow(js: Any, q: Query, after_seq: int) -> AsyncIterator[Flow]:
    """Matching flows stored after ``after_seq``, as they come (an ordered consumer: no gap, no repeat)."""
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    sub = await js.subscribe(subjects.FLOWS_ALL, stream=STREAM_FLOWS.name, ordered_consumer=True, config=cfg)
    try:
        async for m in sub.messages:
            flow = _to_flow(m.subject, m.data, q.bad)
            if flow is not None and q.keep(flow):
                yield flow
    finally:
        await sub.unsubscribe()


async def connect_admin(args: argparse.Namespace, name: str) -> Bus:
    """The local cluster as admin, or the cluster the NATS options name (meshctl/natsopts.py)."""
    from meshctl.natsopts import connect_cli

    bus, _ = await connect_cli(args, name)
    return bus


async def observe(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        allow, deny = filters_from_args(args)
        since, until = time_bounds(args)
    except FilterError as e:
        raise NodemeshError(str(e)) from e
    if getattr(args, "negate_next", False):
        raise NodemeshError("--not must come before a filter flag")
    if since and until and since > until:
        raise NodemeshError("--since is after --until")
    last = args.last if args.last is not None else (0 if args.follow else 20)
    if last < 0:
        raise NodemeshError("--last must be 0 or more")
    # --since without --last: every flow since then (as hubble observe --since)
    q = Query(allow, deny, since, until, last, unlimited=since is not None and args.last is None)
    bus = await connect_admin(args, "nodemesh-observe")
    printer = _Printer(args.output, out or sys.stdout, getattr(args, "print_node_name", False))
    try:
        found, seq = await history(bus.js, q)
        printer.batch(found, header=True)
        if args.follow:
            async for flow in follow(bus.js, q, seq):
                printer.batch([flow], header=False)
    finally:
        if q.bad[0]:
            print(f"warning: skipped {q.bad[0]} undecodable flow message(s)", file=sys.stderr)
        await bus.nc.close()
    return 0
