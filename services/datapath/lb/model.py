"""What the socket load-balancer serves, independent of maps: frontends, backends, their plan.

A :class:`Frontend` is one address:port/protocol the kernel translates (a ClusterIP port, a node
address's NodePort, a LoadBalancer ingress IP, an externalIP). Its :class:`FrontendPlan` says which
backends fill its slots and how (type, session affinity, traffic policy). ``plan.py`` derives plans
from Services and EndpointSlices; ``diff.py`` turns a plan change into ordered map writes.
The flag values are the ones of ``bpf/include/nm_lb.h``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BE_ACTIVE",
    "BE_TERMINATING",
    "F_AFFINITY",
    "F_CLUSTER_IP",
    "F_EXTERNAL_IP",
    "F_L7",
    "F_LOAD_BALANCER",
    "F_LOCAL",
    "F_NODE_PORT",
    "PROTO_NUMBERS",
    "TYPE_FLAGS",
    "Backend",
    "Frontend",
    "FrontendPlan",
    "ServiceRef",
    "proto_name",
]

# Must be in sync with NM_LB_F_* in bpf/include/nm_lb.h
F_CLUSTER_IP = 0x01
F_NODE_PORT = 0x02
F_LOAD_BALANCER = 0x04
F_EXTERNAL_IP = 0x08
F_AFFINITY = 0x10
F_LOCAL = 0x20
F_L7 = 0x40
TYPE_FLAGS = {
    F_CLUSTER_IP: "ClusterIP",
    F_NODE_PORT: "NodePort",
    F_LOAD_BALANCER: "LoadBalancer",
    F_EXTERNAL_IP: "ExternalIP",
}
# Must be in sync with NM_LB_BE_* in bpf/include/nm_lb.h
BE_ACTIVE = 0
BE_TERMINATING = 1

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}


def proto_name(proto: int) -> str:
    return {6: "TCP", 17: "UDP"}.get(proto, str(proto))


@dataclass(frozen=True, order=True)
class Frontend:
    addr: str  # dotted IPv4
    port: int
    proto: int  # 6 TCP, 17 UDP

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{proto_name(self.proto)}"


@dataclass(frozen=True, order=True)
class Backend:
    addr: str
    port: int
    proto: int

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{proto_name(self.proto)}"


@dataclass(frozen=True, order=True)
class ServiceRef:
    namespace: str
    name: str
    port_name: str = ""  # the Service port's name ("" for a single unnamed port)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")


@dataclass(frozen=True)
class FrontendPlan:
    """One frontend and the backends its slots hold, in slot order preference (sorted)."""

    frontend: Frontend
    service: ServiceRef
    type_flag: int  # one of TYPE_FLAGS
    backends: tuple[Backend, ...] = ()
    # parallel to backends: BE_ACTIVE, or BE_TERMINATING when only terminating endpoints serve
    states: tuple[int, ...] = ()
    affinity_timeout: int = 0  # seconds; 0 = no session affinity
    local: bool = False  # a traffic policy Local narrowed the backends to one node's
    l7_proxy_port: int = 0  # reserved for lb-l7
    # the node each backend runs on (parallel to backends; "" unknown), for listing and flows
    nodes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def flags(self) -> int:
        f = self.type_flag
        if self.affinity_timeout:
            f |= F_AFFINITY
        if self.local:
            f |= F_LOCAL
        if self.l7_proxy_port:
            f |= F_L7
        return f
