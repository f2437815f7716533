"""Configuration of the identity service (flags, ``NODEMESH_*`` environment, ``--config``)."""

from __future__ import annotations

from nodemesh.config import ServiceConfig

__all__ = ["IdentityConfig"]


class IdentityConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cluster_name: str = "default"
    """Value of the ``io.cilium.k8s.policy.cluster`` label every pod identity carries."""
    cluster_id: int = 0
    """0..255; identities are allocated in ``cluster_id << 16`` .. (bits 16-23 on the wire)."""
    gc_grace: float = 1800.0
    """Seconds an identity stays after its last reference went (Cilium: 30 min)."""
    gc_interval: float = 60.0
    trust_domain: str = "cluster.local"
    ca_dir: str = ""
    """A mounted Secret with tls.key+tls.crt (read-only); empty: ``<data-dir>/ca``, created on first start."""
    ca_lifetime: float = 365 * 86400.0
    ca_rotate_before: float = 30 * 86400.0
    """Rotate the CA automatically when less than this much of its lifetime is left."""
    ca_check_interval: float = 2.0
    """How often replicas re-read the CA files (a rotation by another replica or a Secret update)."""
    svid_ttl: float = 3600.0
    workers: int = 4
    lease_renew: float = 1.0
    batch_preallocate: bool = False
    """A new leader allocates every new label set in atomic batches before its per-pod resync.
    Off by default: measured slower at start-up on this machine (bench/identity/RESULTS.md §4)."""
