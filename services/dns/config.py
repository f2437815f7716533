"""The DNS service's configuration (flags, ``NODEMESH_*`` environment, ``--config FILE``)."""

from __future__ import annotations

from nodemesh.config import ServiceConfig

__all__ = ["DnsConfig"]


class DnsConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one DNS server (stateless: replicas are interchangeable)."""

    listen: str = "127.0.0.1:53"
    """Comma-separated host:port to serve on, UDP and TCP each (port 0 picks a free one). Local mode:
    ``169.254.20.10:53`` on ``lo``, the address kube-dns' EndpointSlice points at (docs/dns.md)."""
    cluster_domain: str = "cluster.local"
    """The cluster domain (kubelet's ``--cluster-domain``)."""
    ttl_s: int = 5
    """TTL of every cluster record, and the negative-answer TTL (CoreDNS' default)."""
    upstreams: str = ""
    """Comma-separated resolvers (host or host:port) for names outside the cluster domain; empty: the
    ``nameserver`` lines of ``resolv_conf`` (minus our own listen addresses)."""
    resolv_conf: str = "/etc/resolv.conf"
    """The host's resolver configuration, re-read when it changes."""
    forward_timeout_s: float = 2.0
    """Time budget for one forwarded query over all upstreams; after it the client gets SERVFAIL."""
    max_forwards: int = 1024
    """Forwarded queries waiting for an upstream at once; beyond it SERVFAIL at once."""
    max_tcp: int = 256
    """Open TCP client connections at once."""
    tcp_idle_s: float = 10.0
    """A TCP client connection idle this long is closed."""
    cache_entries: int = 100_000
    """Built answers kept per transport (dropped whenever the cluster state changes)."""
