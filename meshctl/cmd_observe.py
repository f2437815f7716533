"""``nodemesh observe``: show flows like ``hubble observe``, from the JetStream stream FLOWS.

This module holds the flags only (every CLI start imports it): the work is in
:mod:`meshctl.observe_stream`, imported when ``observe`` runs.

``--last N`` prints the last N flows that match the filters; ``--since``/``--until`` bound them by
time (RFC 3339, a date, or an age such as ``5m``, ``1h30m``); ``--follow`` then goes on with new
flows. The filter flags are Hubble's (:mod:`meshctl.flowfilter`); ``--not`` turns the filter flag
after it into an exclusion (Hubble's blacklist), e.g. ``--not --to-port 53``. Output: ``-o table``
(default), ``compact`` and ``dict`` like the hubble CLI, ``json``/``jsonpb`` one
``observer.GetFlowsResponse`` per line.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from meshctl.natsopts import add_nats_options

if TYPE_CHECKING:
    from meshctl.flowfilter import FlowFilter

__all__ = ["filters_from_args", "parse_time", "register", "time_bounds"]

#: the filter flags' destinations (argparse dest → build_filters keyword)
_FILTERS: list[str] = []
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?)?)(?:\.(\d+))?([Zz]|[+-]\d\d:?\d\d)?$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Filter(argparse.Action):
    """A filter flag: its values go to the allow filters, or to the deny ones right after ``--not``."""

    def __call__(self, parser: Any, ns: argparse.Namespace, values: Any, option: Any = None) -> None:
        if getattr(ns, "negate_next", False):
            ns.negate_next = False
            deny: dict[str, list[str]] = ns.deny
            deny.setdefault(self.dest, []).append(values)
        else:
            getattr(ns, self.dest).append(values)


class _Not(argparse.Action):
    def __call__(self, parser: Any, ns: argparse.Namespace, values: Any, option: Any = None) -> None:
        ns.negate_next = True


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("observe", help="show flows (like hubble observe)")
    p.add_argument("--last", type=int, default=None, help="last N matching flows (default 20; 0 with -f)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("--since", default=None, help="flows since TIME (RFC 3339, YYYY-MM-DD, or an age: 5m, 1h)")
    p.add_argument("--until", default=None, help="flows until TIME (same formats as --since)")
    p.add_argument("-o", "--output", choices=("table", "compact", "dict", "json", "jsonpb"), default="table")
    p.add_argument("--print-node-name", action="store_true", help="print the node name (compact, dict)")
    p.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")
    add_nats_options(p)
    p.add_argument("--not", action=_Not, nargs=0, help="the next filter flag excludes what it matches")
    p.set_defaults(func=_observe, deny={}, negate_next=False)

    def flag(*names: str, dest: str, help: str) -> None:
        p.add_argument(*names, dest=dest, action=_Filter, default=[], help=help)
        _FILTERS.append(dest) if dest not in _FILTERS else None

    for side in ("from-", "to-", ""):
        either = " (either side)" if not side else ""
        d = side.replace("-", "_")
        flag(f"--{side}pod", dest=f"{d}pod", help=f"[ns/]pod-name prefix{either}")
        flag(f"--{side}service", dest=f"{d}service", help=f"[ns/]Service name prefix{either}")
        flag(f"--{side}label", dest=f"{d}label", help=f"key=value[,key2=value2] (k8s: optional){either}")
        flag(f"--{side}identity", dest=f"{d}identity", help=f"numeric or reserved identity{either}")
        flag(f"--{side}ip", dest=f"{d}ip", help=f"IP or CIDR{either}")
        flag(f"--{side}port", dest=f"{d}port", help=f"L4 port{either}")
        flag(f"--{side}workload", dest=f"{d}workload", help=f"workload NAME or KIND/NAME{either}")
    flag("--from-namespace", dest="from_namespace", help="source namespace")
    flag("--to-namespace", dest="to_namespace", help="destination namespace")
    flag("-n", "--namespace", dest="namespace", help="namespace (either side)")
    flag("--verdict", dest="verdict", help="FORWARDED, DROPPED, …")
    flag("--protocol", dest="protocol", help="tcp, udp, icmp, sctp")
    flag("-t", "--type", dest="types", help="drop, trace, policy-verdict, l7")
    flag("--traffic-direction", dest="traffic_direction", help="ingress or egress")
    flag("--node-name", "--node", dest="node", help="node name glob (node-*), as hubble's --node-name")
    flag("--http-status", dest="http_status", help="HTTP status code or prefix (404, 5+)")
    flag("--http-method", dest="http_method", help="HTTP method (GET, POST, …)")
    flag("--http-path", dest="http_path", help="regular expression on the HTTP path")


def _build(values: dict[str, Sequence[str]]) -> list[FlowFilter]:
    from meshctl.flowfilter import build_filters

    return build_filters(**{k: v for k, v in values.items() if v})


def filters_from_args(args: argparse.Namespace) -> tuple[list[FlowFilter], list[FlowFilter]]:
    """(allow, deny) filters for the parsed flags. Raises FilterError for a bad value."""
    allow = _build({dest: getattr(args, dest, []) for dest in _FILTERS})
    deny = _build(dict(getattr(args, "deny", {})))
    return allow, deny


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """RFC 3339 (nanoseconds allowed), ``YYYY-MM-DD[THH:MM:SS]`` (UTC) or an age (``90s``, ``1h30m``)."""
    from meshctl.flowfilter import FilterError

    v = value.strip()
    if _DURATION.match(v):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(v))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    m = _STAMP.match(v)
    text = v
    if m:  # Python takes at most microseconds and (before 3.11's fromisoformat) no "Z"
        base, frac, tz = m.groups()
        text = (
            base
            + (f".{frac[:6].ljust(6, '0')}" if frac else "")
            + ("+00:00" if tz in ("Z", "z") else tz or "")
        )
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        raise FilterError(f"time {value!r} is not RFC 3339, YYYY-MM-DD or an age such as 5m") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def time_bounds(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    since = parse_time(args.since) if getattr(args, "since", None) else None
    until = parse_time(args.until) if getattr(args, "until", None) else None
    return since, until


def _observe(args: argparse.Namespace) -> Any:
    from meshctl.observe_stream import observe

    return observe(args)
