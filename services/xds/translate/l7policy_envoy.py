"""Envoy resources of the L7 policy listeners (pure JSON → protobuf builders for ``l7policy``).

Listener ``nodemesh-l7-policy-<dir>``: transparent, ``original_dst`` (+ ``original_src`` for
ingress); per endpoint filter chains with the HTTP connection manager (RBAC → router to the
ORIGINAL_DST cluster, 403 ``Access denied``, optional gRPC access log). See docs/l7-policy.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

# Imported for their descriptors: json_format resolves the typed_config "@type"s through them.
from envoy.extensions.access_loggers.grpc.v3 import als_pb2 as _als  # noqa: F401
from envoy.extensions.filters.http.original_src.v3 import original_src_pb2 as _hosrc  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as _rbac  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2 as _router  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2 as _odst  # noqa: F401
from envoy.extensions.filters.listener.original_src.v3 import original_src_pb2 as _osrc  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2 as _hcm,
)
from google.protobuf import json_format

from nodemesh.policy.model import DIR_EGRESS, DIR_INGRESS

__all__ = [
    "MARK_PROXY_EGRESS",
    "MARK_PROXY_INGRESS",
    "chain",
    "cidrs",
    "cluster",
    "cluster_name",
    "listener",
    "listener_name",
]

# Must be in sync with NM_MARK_PROXY_* in bpf/include/nm_maps.h (services/datapath/l7redirect.py)
MARK_PROXY_INGRESS = 0x0A00
MARK_PROXY_EGRESS = 0x0B00
_DIRS = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}
_T = "type.googleapis.com/envoy."


def listener_name(direction: int) -> str:
    return f"nodemesh-l7-policy-{_DIRS[direction]}"


def cluster_name(direction: int) -> str:
    return f"nodemesh-l7-policy-{_DIRS[direction]}"


def cidrs(ips: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for c in sorted(set(ips)):
        net = ipaddress.ip_network(c if "/" in c else f"{c}/32", strict=False)
        out.append({"address_prefix": str(net.network_address), "prefix_len": net.prefixlen})
    return out


def listener(direction: int, addr: str, port: int, chains: list[dict[str, Any]]) -> listener_pb2.Listener:
    body: dict[str, Any] = {
        "name": listener_name(direction),
        "address": {"socket_address": {"address": addr, "port_value": port}},
        "transparent": True,
        "traffic_direction": "INBOUND" if direction == DIR_INGRESS else "OUTBOUND",
        "listener_filters": [
            {
                # the connection's local address is the original destination (transparent socket,
                # handed over by the datapath): restore it, for the filter chain match and for the
                # ORIGINAL_DST cluster (Envoy reads it with getsockname when SO_ORIGINAL_DST fails)
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": _T + "extensions.filters.listener.original_dst.v3.OriginalDst"},
            },
        ],
        "filter_chains": chains,
    }
    if direction == DIR_INGRESS:
        # the destination is always a local pod: every upstream leg keeps the client's address
        body["listener_filters"].append(
            {
                "name": "envoy.filters.listener.original_src",
                "typed_config": {
                    "@type": _T + "extensions.filters.listener.original_src.v3.OriginalSrc",
                    "mark": MARK_PROXY_INGRESS,
                },
            }
        )
    return json_format.ParseDict(body, listener_pb2.Listener())


def chain(
    direction: int, ep_ip: str, policies: dict[str, Any], als: str, pod_dests: list[str] | None = None
) -> dict[str, Any]:
    """``pod_dests`` (egress): this chain is for connections to these pod addresses, whose upstream
    leg keeps the client's address (the destination's programs return its replies to Envoy);
    without it, the chain for any other destination (upstream from the host's address: a reply
    from outside the mesh passes no program that could return it to Envoy)."""
    d = _DIRS[direction]
    hcm: dict[str, Any] = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"l7-policy-{d}",
        "route_config": {
            "name": f"nodemesh-l7-policy-{d}",
            # the cluster arrives in the same update (CDS first); do not reject the listener if
            # Envoy has not created it yet when the listener is checked
            "validate_clusters": False,
            "virtual_hosts": [
                {
                    "name": "original-destination",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": cluster_name(direction), "timeout": "3600s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.rbac.v3.RBAC",
                    "rules": {"action": "ALLOW", "policies": policies},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
        # Cilium's answer to a denied request: 403 "Access denied"
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "nodemesh.l7.denied"},
                            }
                        }
                    },
                    "body": {"inline_string": "Access denied\r\n"},
                }
            ]
        },
    }
    if als:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.http_grpc",
                "typed_config": {
                    "@type": _T + "extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                    "common_config": {
                        "log_name": "nodemesh",
                        "transport_api_version": "V3",
                        "grpc_service": {"envoy_grpc": {"cluster_name": als}},
                        "buffer_flush_interval": "0.250s",
                        # Tells the receiver the flow's traffic_direction (docs/l7-visibility.md).
                        "custom_tags": [{"tag": "nodemesh.direction", "literal": {"value": d.upper()}}],
                    },
                    "additional_request_headers_to_log": ["traceparent"],
                },
            }
        ]
    match_key = "prefix_ranges" if direction == DIR_INGRESS else "source_prefix_ranges"
    match: dict[str, Any] = {match_key: [{"address_prefix": ep_ip, "prefix_len": 32}]}
    name = f"{d}:{ep_ip}"
    if pod_dests:
        match["prefix_ranges"] = cidrs(pod_dests)
        name += ":pods"
        hcm["http_filters"].insert(
            1,
            {
                "name": "envoy.filters.http.original_src",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.original_src.v3.OriginalSrc",
                    "mark": MARK_PROXY_EGRESS,
                },
            },
        )
    return {
        "name": name,
        "filter_chain_match": match,
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm},
        ],
    }


def cluster(direction: int) -> cluster_pb2.Cluster:
    body = {
        "name": cluster_name(direction),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",  # Cilium's proxy-connect-timeout
        "cleanup_interval": "60s",
    }
    return json_format.ParseDict(body, cluster_pb2.Cluster())
