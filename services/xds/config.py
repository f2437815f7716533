"""xds's configuration (flags, ``NODEMESH_*`` environment, ``--config FILE``)."""

from __future__ import annotations

from typing import Literal

from nodemesh.config import ServiceConfig

__all__ = ["XdsConfig"]


class XdsConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one xds replica (replicas are stateless and interchangeable)."""

    grpc_addr: str = "127.0.0.1:18000"
    """host:port of the ADS gRPC server Envoys connect to (port 0 picks one)."""
    debounce_ms: int = 50
    """Changes within this long of the last translation wait this long and are coalesced (a change
    after a quiet period is translated at once)."""
    programmed_nodes: Literal["all", "any"] = "all"
    """A Gateway is Programmed when every Node's Envoy (``all``, local mode) or at least one
    (``any``) applied the listener versions serving it."""
    nodes: str = ""
    """Comma-separated node names whose Envoys count for ``all``; "" = the cluster's Node objects."""
    tls_dir: str = ""
    """Directory with ``tls.crt``/``tls.key`` (xds's serving certificate) and ``ca.crt`` (the xDS CA
    whose node certificates are accepted): ADS then requires mTLS and binds each stream to the node
    its client certificate names (docs/security.md). Required unless ``insecure_ads``."""
    insecure_ads: bool = False
    """Serve ADS in plaintext and believe any node id: only for in-process tests on loopback."""
    access_log_cluster: str = "nodemesh-als"
    """Envoy cluster (in every node's bootstrap) of the gRPC access log service that turns HTTP logs
    into L7 flows; "" = generated HTTP listeners log nothing (docs/l7-visibility.md)."""
