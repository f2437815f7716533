"""authd's configuration (flags, ``NODEMESH_*`` environment, ``--config FILE``)."""

from __future__ import annotations

from typing import Literal

from nodemesh.config import ServiceConfig

__all__ = ["AuthdConfig"]


class AuthdConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one node's authd."""

    auth_port: int = 4250
    """TCP port of the authd ↔ authd TLS 1.3 listener (on the node address)."""
    listen_address: str = ""
    """Address to listen on and to dial from; "" = this node's address from KV ``nodes``."""
    trust_domain: str = "cluster.local"
    """SPIFFE trust domain used until the trust bundle in KV ``trust`` names one."""
    mode: Literal["spire", "test-always-fail"] = "spire"
    """``test-always-fail`` fails every handshake (Cilium's test mode), with an explicit reason."""
    proactive: bool = True
    """Authenticate the pairs policy requires ahead of traffic (off = Cilium's reactive-only)."""
    queue_size: int = 1024
    """Bound of the reactive queue (auth-required signals); overflow is counted and dropped."""
    workers: int = 8
    """Handshakes run concurrently (blocking TLS in a thread pool)."""
    handshake_timeout: float = 5.0
    """Connect + handshake timeout in seconds."""
    renew_fraction: float = 0.5
    """SVIDs are renewed and verdicts re-authenticated at this fraction of their lifetime."""
    workload_api: bool = True
    """Serve the SPIFFE Workload API on ``workload_socket``."""
    workload_socket: str = ""
    """Unix socket of the Workload API; "" = ``<data_dir>/workload.sock``."""
    netns_dir: str = "/run/netns"
    """Where the datapath names pod network namespaces (``nm-<hash>``), for Workload API attestation."""
