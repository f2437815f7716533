"""The resolv.conf kubelet gives a pod (pure), for local mode, where the datapath is the kubelet.

kubelet's rules (pkg/kubelet/network/dns): ``dnsPolicy: ClusterFirst`` (the default) and
``ClusterFirstWithHostNet`` give ``nameserver <cluster DNS>``, ``search <ns>.svc.<domain>
svc.<domain> <domain>`` followed by the host's own search domains, and ``options ndots:5``;
``Default`` gives the host's resolv.conf; ``None`` only what ``dnsConfig`` says. ``dnsConfig`` is
then merged in: its nameservers and searches appended (at most 3 and 32, duplicates dropped), its
options replacing those of the same name. ClusterFirst without a cluster DNS address falls back to
Default, as kubelet does when ``--cluster-dns`` is unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PodDns", "pod_resolv_conf"]

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32


@dataclass(frozen=True)
class PodDns:
    """kubelet's ``--cluster-dns`` and ``--cluster-domain``."""

    cluster_dns: str = "10.96.0.10"
    cluster_domain: str = "cluster.local"


def _host(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) of a resolv.conf."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            searches = parts[1:]  # the last search/domain line wins, as in glibc
        elif parts[0] == "options":
            options += parts[1:]
    return servers, searches, options


def _strs(value: Any) -> list[str]:
    return [str(v) for v in value if isinstance(v, str | int)] if isinstance(value, list) else []


def _uniq(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def pod_resolv_conf(pod: dict[str, Any], dns: PodDns, host_resolv: str) -> str | None:
    """The pod's resolv.conf text; None when the pod simply sees the host's file."""
    spec = pod.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    meta = pod.get("metadata")
    ns = str((meta if isinstance(meta, dict) else {}).get("namespace") or "default")
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host_net = spec.get("hostNetwork") is True
    extra = spec.get("dnsConfig")
    extra = extra if isinstance(extra, dict) else {}
    h_servers, h_searches, h_options = _host(host_resolv)
    cluster = (policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host_net)) and bool(
        dns.cluster_dns
    )
    if cluster:
        d = dns.cluster_domain
        servers, options = [dns.cluster_dns], ["ndots:5"]
        searches = [f"{ns}.svc.{d}", f"svc.{d}", d, *h_searches]
    elif policy == "None":
        servers, searches, options = [], [], []
    else:
        if not extra:
            return None  # Default (or host network): exactly the host's file
        servers, searches, options = h_servers, h_searches, h_options
    servers = _uniq(servers + _strs(extra.get("nameservers")))[:MAX_NAMESERVERS]
    searches = _uniq(searches + _strs(extra.get("searches")))[:MAX_SEARCHES]
    merged: dict[str, str] = {o.split(":", 1)[0]: o for o in options}
    for o in extra.get("options") or []:
        if isinstance(o, dict) and isinstance(o.get("name"), str) and o["name"]:
            value = o.get("value")
            merged[o["name"]] = f"{o['name']}:{value}" if value not in (None, "") else o["name"]
    lines = []
    if searches:
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {s}" for s in servers]
    if merged:
        lines.append("options " + " ".join(merged.values()))
    return "\n".join(lines) + "\n"
