"""Local mode's cluster DNS address: ``169.254.20.10`` on ``lo``, where the DNS server listens.

The choice follows NodeLocal DNSCache, which serves pods on this link-local address on every node: it
is not in any cluster CIDR, cannot clash with the host's own resolver (often on 127.0.0.53), and a
pod reaches it by its default route (via its veth to the host, where the address is local). The
supervisor adds it before the processes start and removes it when it stops; ``nodemesh down``
removes it after a supervisor that was killed (the address is in ``run/cluster.json``).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import msgspec
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from localcluster.layout import DNS_ADDR

__all__ = ["DNS_ADDR", "add_dns_address", "cleanup_dns_address", "remove_dns_address"]

log = logging.getLogger("localcluster.dns")


def _lo(ipr: IPRoute) -> int:
    return int(ipr.link_lookup(ifname="lo")[0])


def add_dns_address(addr: str = DNS_ADDR) -> None:
    """Put ``addr``/32 on ``lo`` (idempotent). Raises OSError/NetlinkError without privileges."""
    with IPRoute() as ipr:
        try:
            ipr.addr("add", index=_lo(ipr), address=addr, prefixlen=32)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise


def remove_dns_address(addr: str = DNS_ADDR) -> None:
    """Take ``addr``/32 off ``lo`` (idempotent)."""
    with IPRoute() as ipr:
        try:
            ipr.addr("del", index=_lo(ipr), address=addr, prefixlen=32)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                raise


class _DnsOnly(msgspec.Struct):
    dns_addr: str = ""


def cleanup_dns_address(data_dir: Path) -> None:
    """Remove the DNS address a cluster in ``data_dir`` put on ``lo`` (after a killed supervisor)."""
    try:
        info = msgspec.json.decode((data_dir / "run" / "cluster.json").read_bytes(), type=_DnsOnly)
    except (OSError, msgspec.DecodeError):
        return
    if info.dns_addr:
        try:
            remove_dns_address(info.dns_addr)
        except (OSError, NetlinkError) as e:
            log.warning("removing %s from lo: %s", info.dns_addr, e)
