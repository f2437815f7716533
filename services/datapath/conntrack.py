"""Conntrack lifetimes and garbage collection (pure decisions; the map walk at the edge).

The programs treat an entry whose state's lifetime has passed since its last packet as absent
(``bpf/lib/conntrack.h``); the agent removes such entries (:func:`gc`) so the table drains by age,
not only by LRU eviction, and removes every entry of an endpoint that goes (:func:`flush_endpoint`).
One :class:`CtLifetimes` feeds both: its values are compiled into the programs (:meth:`defines`).
"""

from __future__ import annotations

import msgspec

from services.datapath.maps import CtEntry, CtKey, NodeMaps, ip_to_be32

__all__ = ["CtLifetimes", "flush_endpoint", "gc", "lifetime_s", "stale_keys"]

TCP = 6
TCP_FIN, TCP_RST, TCP_ACK = 0x01, 0x04, 0x10


class CtLifetimes(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds an entry lives after its last packet, per state (Cilium's defaults)."""

    tcp: int = 8000
    """Established TCP (``--bpf-ct-timeout-regular-tcp`` 2h13m20s)."""
    tcp_syn: int = 60
    """TCP until the reply's SYN-ACK (``--bpf-ct-timeout-regular-tcp-syn``)."""
    tcp_fin: int = 10
    """TCP after a FIN or RST in either direction (``--bpf-ct-timeout-regular-tcp-fin``)."""
    any: int = 60
    """UDP, SCTP, ICMP and the rest (``--bpf-ct-timeout-regular-any``)."""

    def defines(self) -> dict[str, int]:
        """The same values for the programs (``-D`` defines of ``bpf/lib/conntrack.h``)."""
        return {
            "NM_CT_LIFETIME_TCP": self.tcp,
            "NM_CT_LIFETIME_TCP_SYN": self.tcp_syn,
            "NM_CT_LIFETIME_TCP_FIN": self.tcp_fin,
            "NM_CT_LIFETIME_ANY": self.any,
        }

    def validate(self) -> None:
        for name in ("tcp", "tcp_syn", "tcp_fin", "any"):
            if getattr(self, name) <= 0:
                raise ValueError(f"conntrack lifetime {name} must be > 0 s, got {getattr(self, name)}")


def lifetime_s(proto: int, entry: CtEntry, lt: CtLifetimes) -> int:
    """The entry's lifetime in its current state: mirrors ``nm_ct_lifetime_ns``."""
    if proto != TCP:
        return lt.any
    if (entry.tx_flags_seen | entry.rx_flags_seen) & (TCP_FIN | TCP_RST):
        return lt.tcp_fin
    if not entry.rx_flags_seen & TCP_ACK:
        return lt.tcp_syn
    return lt.tcp


def stale_keys(items: list[tuple[CtKey, CtEntry]], lt: CtLifetimes, now_ns: int) -> list[CtKey]:
    """Entries whose lifetime passed since their last packet (``now_ns``: CLOCK_MONOTONIC)."""
    return [
        k
        for k, e in items
        if now_ns > e.last_seen_ns and now_ns - e.last_seen_ns > lifetime_s(k.proto, e, lt) * 1_000_000_000
    ]


def gc(maps: NodeMaps, lt: CtLifetimes, now_ns: int) -> int:
    """Remove expired entries; returns how many went."""
    return maps.ct_delete_many(stale_keys(list(maps.ct_items()), lt, now_ns))


def flush_endpoint(maps: NodeMaps, ip: str) -> int:
    """Remove every entry with ``ip`` at either end (an endpoint that went: its address may be handed
    to a new pod, which must not inherit its connections); returns how many went."""
    addr = ip_to_be32(ip)
    return maps.ct_delete_many([k for k, _ in maps.ct_items() if addr in (k.saddr, k.daddr)])
