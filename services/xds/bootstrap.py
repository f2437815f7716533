"""The bootstrap of a per-node Envoy: node id = node name, everything dynamic over ADS from xds.

Envoy fetches listeners and clusters over one aggregated gRPC stream (Delta by default, SotW with
``delta=False``); routes, endpoints and secrets follow from them over the same stream. The
static resources are the ``xds`` cluster (HTTP/2 to the ADS server) and ``nodemesh-als``, the node's
gRPC access log service that turns HTTP access logs into L7 flows (docs/l7-visibility.md). Admin
listens on loopback only.
With ``tls_dir`` (the node's credential from nodemesh/xdspki.py: ``tls.crt``, ``tls.key``, ``ca.crt``)
the ``xds`` cluster speaks mTLS: Envoy presents the node's certificate (xds serves only the node it
names) and accepts only a server certificate from the same CA naming ``xds``.
Gateway listeners bind the Gateway's address (127.0.100.x in local mode); several node Envoys bind the
same address:port through SO_REUSEPORT (``Listener.enable_reuse_port``, default on Linux), which the
kernel allows across processes of one uid — see docs/xds.md.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["ALS_CLUSTER", "XDS_CLUSTER", "XDS_SERVER_NAME", "render_bootstrap"]

XDS_CLUSTER = "xds"
#: The DNS SAN of xds's serving certificate, which Envoy checks whatever address it dials.
XDS_SERVER_NAME = "xds"
#: The access log service cluster translated HTTP connection managers log to (TranslateInput).
ALS_CLUSTER = "nodemesh-als"
_HTTP_OPTIONS_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS = "type.googleapis.com/" + _HTTP_OPTIONS_NAME


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def render_bootstrap(
    node: str,
    xds_host: str,
    xds_port: int,
    admin_port: int,
    *,
    delta: bool = True,
    cluster: str = "nodemesh",
    access_log_path: str = "",
    als_port: int | None = None,
    als_socket: str = "",
    tls_dir: str = "",
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (as a JSON-shaped dict) for ``node`` talking ADS to ``xds_host:xds_port``.

    ``admin_port`` 0 lets Envoy pick one (read it back with ``--admin-address-path``).
    ``access_log_path`` (optional) logs admin requests there; L7 flow logs come with the listeners.
    ``als_port``: the node's access log service on ``127.0.0.1:als_port`` (or ``als_socket``, a unix
    socket path). The ``nodemesh-als`` cluster exists either way (without endpoints when neither is
    given), so listeners that log to it are always accepted; their logs are then dropped by Envoy.
    ``tls_dir``: the node's xDS client credential directory ("" = plaintext, tests only).
    """
    if not node:
        raise ValueError("node name is required")
    if not 0 < xds_port < 65536 or not 0 <= admin_port < 65536:
        raise ValueError("ports must be in 1..65535 (admin may be 0)")
    if als_port is not None and not 0 < als_port < 65536:
        raise ValueError("als_port must be in 1..65535")
    grpc_service = {
        "envoy_grpc": {
            "cluster_name": XDS_CLUSTER,
            # Reconnect quickly after an xds restart (default backoff grows to 30 s).
            "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}},
        }
    }
    admin: dict[str, Any] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
    }
    if access_log_path:
        admin["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": access_log_path,
                },
            }
        ]
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if _is_ip(xds_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_NAME: {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": xds_host, "port_value": xds_port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls_dir:
        xds_cluster["transport_socket"] = _xds_tls(tls_dir)
    return {
        "node": {"id": node, "cluster": cluster, "metadata": {"nodemesh_node": node}},
        "admin": admin,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": True,
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        # Bounds downstream connections (Envoy warns at start without it); far above what a node serves.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 100_000,
                    },
                }
            ]
        },
        "static_resources": {
            "clusters": [
                xds_cluster,
                _als_cluster(als_port, als_socket),
            ]
        },
    }


def _xds_tls(tls_dir: str) -> dict[str, Any]:
    d = tls_dir.rstrip("/")
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": XDS_SERVER_NAME,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": f"{d}/tls.crt"},
                        "private_key": {"filename": f"{d}/tls.key"},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": f"{d}/ca.crt"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": XDS_SERVER_NAME}}
                    ],
                },
            },
        },
    }


def _als_cluster(port: int | None, socket: str) -> dict[str, Any]:
    lb: list[dict[str, Any]] = []
    addr: dict[str, Any] | None = None
    if socket:
        addr = {"pipe": {"path": socket}}
    elif port is not None:
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    if addr is not None:
        lb = [{"lb_endpoints": [{"endpoint": {"address": addr}}]}]
    return {
        "name": ALS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_NAME: {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": ALS_CLUSTER, "endpoints": lb},
    }
