"""The node-local endpoint socket between the ``nodemesh-cni`` plugin and the node's datapath.

One request and one reply per connection, each a JSON document followed by a newline, over a Unix
socket (``DatapathConfig.cni_socket``: a 0600 socket in a 0700 directory, so only root — the container
runtime that executes CNI plugins — can connect; the datapath also checks the peer's uid).

The datapath replies to ADD only once the endpoint's policy, its endpoint entry and the tc programs are
in place, so the pod's first packet is already judged by its policy. Errors carry a CNI error code
(:data:`CNI_ERR_TRY_AGAIN` when the agent is not synced yet), which the plugin returns unchanged.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "CNI_ERR_INVALID_CONFIG",
    "CNI_ERR_IO",
    "CNI_ERR_TRY_AGAIN",
    "CNI_ERR_UNKNOWN_CONTAINER",
    "CniMode",
    "EndpointReply",
    "EndpointRequest",
]

# The CNI spec's well-known error codes (SPEC.md "Error"); plugin-specific codes start at 100.
CNI_ERR_UNKNOWN_CONTAINER = 3
CNI_ERR_IO = 5
CNI_ERR_INVALID_CONFIG = 7
CNI_ERR_TRY_AGAIN = 11

CniMode = Literal["chained", "standalone"]


class EndpointRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the plugin knows about one container's attachment."""

    command: Literal["ADD", "DEL", "CHECK"]
    container_id: str
    mode: CniMode
    netns: str = ""
    """CNI_NETNS: the path of the pod's network namespace (may be empty on DEL)."""
    ifname: str = "eth0"
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    host_ifname: str = ""
    """Chained: the host side of the pod's veth, as the plugin found it (the peer of ``ifname``)."""
    host_ifindex: int = 0
    ip: str = ""
    """Chained: the pod's IPv4 address the previous plugin assigned (``prevResult.ips``)."""


class EndpointReply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ok: bool
    code: int = 0
    """CNI error code when not ``ok``."""
    msg: str = ""
    details: str = ""
    # ADD in standalone mode: what the datapath created (the plugin turns it into the CNI result)
    ip: str = ""
    gateway: str = ""
    host_ifname: str = ""
    host_mac: str = ""
    pod_mac: str = ""
    endpoint_id: int = 0
