"""L7 redirect plumbing outside the BPF programs: the proxy settings the programs read, and the
policy route that delivers redirected packets to the host.

The tc programs hand a packet of an L7-policed flow to the node's Envoy with ``bpf_sk_assign`` and
mark it ``0x200`` (Cilium's ``MARK_MAGIC_TO_PROXY``). ``sk_assign`` only sets the receiving socket;
the stack still routes the packet, and its destination is the original peer, not a host address —
so one policy rule (``fwmark 0x200/0xf00 → table 2004``, a ``local default dev lo`` route there,
exactly Cilium's) makes the stack deliver marked packets locally, where the assigned socket takes
them. The same rule returns replies of Envoy's upstream legs (marked by the programs) to Envoy.
See docs/l7-policy.md.
"""

from __future__ import annotations

import errno
import logging

from pyroute2 import IPRoute, NetlinkError

from nodemesh.policy.model import ProxyPorts
from services.datapath.maps import NodeMaps, ip_to_be32

__all__ = [
    "MARK_MASK",
    "MARK_PROXY_EGRESS",
    "MARK_PROXY_INGRESS",
    "MARK_TO_PROXY",
    "PROXY_TABLE",
    "configure",
    "ensure_proxy_route",
    "proxy_route_present",
    "remove_proxy_route",
]

log = logging.getLogger(__name__)

# Must be in sync with NM_MARK_* in bpf/include/nm_maps.h
MARK_MASK = 0x0F00
MARK_TO_PROXY = 0x0200
MARK_PROXY_INGRESS = 0x0A00
MARK_PROXY_EGRESS = 0x0B00
# Must be in sync with NM_CFG_PROXY_* in bpf/include/nm_maps.h
CFG_PROXY_ADDR = 1
CFG_PROXY_PORT_INGRESS = 2
CFG_PROXY_PORT_EGRESS = 3

PROXY_TABLE = 2004  # Cilium's proxy routing table number
RULE_PRIORITY = 9  # after the local table (0), before main (32766), as Cilium's


def configure(maps: NodeMaps, proxy_addr: str, ports: ProxyPorts) -> None:
    """Tell the programs where the proxy listens: ``proxy_addr`` (the node's address; "" = 127.0.0.1)
    and the port per direction."""
    addr = ip_to_be32(proxy_addr) if proxy_addr else 0
    for idx, val in (
        (CFG_PROXY_ADDR, addr),
        (CFG_PROXY_PORT_INGRESS, ports.ingress),
        (CFG_PROXY_PORT_EGRESS, ports.egress),
    ):
        maps.config.update(idx.to_bytes(4, "little"), int(val).to_bytes(4, "little"))


def _rule_args() -> dict[str, int]:
    return {"table": PROXY_TABLE, "priority": RULE_PRIORITY, "fwmark": MARK_TO_PROXY, "fwmask": MARK_MASK}


def proxy_route_present(ipr: IPRoute | None = None) -> bool:
    own = ipr or IPRoute()
    try:
        for r in own.get_rules(family=2):
            if r.get_attr("FRA_TABLE") == PROXY_TABLE and r.get_attr("FRA_FWMARK") == MARK_TO_PROXY:
                return True
        return False
    finally:
        if ipr is None:
            own.close()


def ensure_proxy_route() -> None:
    """Idempotent: the rule and the local default route in the proxy table (shared by every node of
    every local cluster on this host: identical for all of them)."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.route("add", type="local", dst="0.0.0.0/0", oif=lo, table=PROXY_TABLE, scope=254)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        if not proxy_route_present(ipr):
            try:
                ipr.rule("add", family=2, **_rule_args())
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise


def remove_proxy_route() -> None:
    """Remove the rule and the route (idempotent)."""
    with IPRoute() as ipr:
        while proxy_route_present(ipr):
            try:
                ipr.rule("del", family=2, **_rule_args())
            except NetlinkError:
                break
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.route("del", type="local", dst="0.0.0.0/0", oif=lo, table=PROXY_TABLE, scope=254)
        except NetlinkError as e:
            if e.code not in (errno.ESRCH, errno.ENOENT):
                log.warning("removing the proxy route failed: %s", e)
