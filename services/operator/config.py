"""Operator configuration."""

from __future__ import annotations

from nodemesh.config import ServiceConfig

__all__ = ["OperatorConfig"]


class OperatorConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    operator_id: str = ""
    """This instance's name in the lease; default <node>-<pid>-<random>."""
    lease_renew_s: float = 1.0
    """How often the active operator renews its lease (the bucket's TTL is 5 s)."""
    lease_grace_s: float = 2.5
    """An active operator that could not renew for this long stops writing (well before the TTL)."""
    resync_s: float = 30.0
    """A full pass at least this often, even without a change (retries writes that failed)."""
    debounce_s: float = 0.05
    """A burst of changes is batched into one pass."""
    write_timeout_s: float = 10.0
    """How long one write may take through the watcher (no active watcher: it fails, retried later)."""
    default_ingress_mode: str = "dedicated"
    """Ingress load-balancer mode without the ``ingress.cilium.io/loadbalancer-mode`` annotation."""
    shared_ingress_namespace: str = "kube-system"
    """Namespace of the shared Ingress Service ``cilium-ingress``."""
