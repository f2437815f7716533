"""Which resolvers names outside the cluster domain go to: the host's /etc/resolv.conf, minus us.

:func:`nameservers` is pure (resolv.conf text → addresses); :class:`Upstreams` re-reads the file when
its modification time changes (checked at most once a second), as CoreDNS' ``forward . /etc/resolv.conf``
follows the host. Our own listening addresses are left out: forwarding to ourselves would loop until
the timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Set as AbstractSet

__all__ = ["Upstreams", "nameservers", "parse_hostport"]

log = logging.getLogger("nodemesh.dns.upstreams")
DNS_PORT = 53


def parse_hostport(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``[::1]:53`` → (address, port); ValueError if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


HostPort = tuple[str, int]


def nameservers(resolv_conf: str, exclude: AbstractSet[HostPort] = frozenset()) -> list[HostPort]:
    """The ``nameserver`` lines of a resolv.conf, in order, as (address, 53), minus ``exclude``."""
    out: list[tuple[str, int]] = []
    for line in resolv_conf.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%", 1)[0]  # fe80::1%eth0: the zone index is for the kernel
            try:
                ip = str(ipaddress.ip_address(addr))
            except ValueError:
                continue
            hp = (ip, DNS_PORT)
            if hp not in exclude and hp not in out and not _wildcard_self(ip, exclude):
                out.append(hp)
    return out


def _wildcard_self(ip: str, exclude: AbstractSet[tuple[str, int]]) -> bool:
    """We listen on 0.0.0.0:53 (or [::]:53): every local address of that family is us."""
    wildcard = "::" if ":" in ip else "0.0.0.0"
    return (wildcard, DNS_PORT) in exclude and ipaddress.ip_address(ip).is_loopback


class Upstreams:
    """The current upstream list: fixed (``explicit``) or from ``path``, minus ``own`` addresses."""

    def __init__(self, explicit: str, path: str, own: list[HostPort], recheck_s: float = 1.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self.own = set(own)
        self.fixed = [parse_hostport(s) for s in explicit.split(",") if s.strip()] if explicit else None
        self._list: list[tuple[str, int]] = []
        self._mtime: float | None = None
        self._checked = 0.0

    def current(self) -> list[tuple[str, int]]:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if now - self._checked >= self.recheck_s or not self._checked:
            self._checked = now
            self._reload()
        return self._list

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            with open(self.path) as fh:
                text = fh.read()
        except OSError as e:
            if self._mtime is not None or self._list:
                log.warning("cannot read %s: %s; no upstream resolvers", self.path, e)
            self._list, self._mtime = [], None
            return
        self._mtime = mtime
        self._list = nameservers(text, self.own)
        log.info("upstream resolvers from %s: %s", self.path, self._list or "none")
