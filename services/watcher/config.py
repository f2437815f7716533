"""Watcher configuration."""

from __future__ import annotations

from nodemesh.config import ServiceConfig

__all__ = ["WatcherConfig"]


class WatcherConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api_url: str = ""
    """Kubernetes API URL without credentials (the local API server); empty: kubeconfig or in-cluster."""
    api_token_file: str = ""
    """File holding the bearer token for ``api_url`` (the local API server's ``<data>/api/token``)."""
    kubeconfig: str = ""
    """kubeconfig file (default: $KUBECONFIG or ~/.kube/config) when api_url is empty."""
    in_cluster: bool = False
    """Use the pod's service account (KUBERNETES_SERVICE_HOST) instead of a kubeconfig."""
    watcher_id: str = ""
    """This instance's name in the lease and in events; default <node>-<pid>-<random>."""
    kinds: str = ""
    """Comma-separated kinds to watch (default: every kind in nodemesh.kinds)."""
    lease_renew_s: float = 1.0
    """How often the active watcher renews its lease (the bucket's TTL is 5 s)."""
    lease_grace_s: float = 2.5
    """An active watcher that could not renew for this long stops publishing (well before the TTL)."""
    watch_timeout_s: int = 300
    """timeoutSeconds of each watch request; the watcher re-watches from its last resourceVersion."""
    list_page_size: int = 500
    """``limit`` of each list request; larger lists are read in pages (``continue``)."""
    missing_kind_retry_s: float = 30.0
    """How often a kind whose API answered 404 (CRD not installed) is tried again."""
