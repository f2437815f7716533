"""Writes endpoints and their policy into the pinned maps, incrementally.

:class:`PolicyWriter` keeps, per endpoint id, the exact bytes it last wrote (rebuilt from the pinned
map at start, so a restarted agent diffs against what is really enforced) and applies only the
difference. Order makes every intermediate state safe: new and changed entries first, deletions
after, then one revision bump so established flows re-check (see ``nm_tc.c``). An endpoint's flags
(enforce ingress/egress) are written after its entries, so it never enforces a half-written map.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.maps import (
    EP_ENFORCE_EGRESS,
    EP_ENFORCE_INGRESS,
    EndpointInfo,
    NodeMaps,
    PolicyKeyC,
    ip_to_be32,
)
from services.datapath.plan import diff, encode_key, encode_policy, encode_value

__all__ = ["ApplyStats", "PolicyWriter", "endpoint_flags"]


def endpoint_flags(policy: EndpointPolicy) -> int:
    """Which directions the programs look up in the policy map: the enforced ones, and one that only
    redirects a port to the L7 proxy for visibility (its allow-all entry answers everything else)."""
    redirects = {k.direction for k, v in policy.entries.items() if v.proxy_port}
    ingress = policy.ingress_enforced or 0 in redirects
    egress = policy.egress_enforced or 1 in redirects
    return (EP_ENFORCE_INGRESS if ingress else 0) | (EP_ENFORCE_EGRESS if egress else 0)


class ApplyStats:
    def __init__(self) -> None:
        self.upserts = 0
        self.deletes = 0
        self.seconds = 0.0


class PolicyWriter:
    """The policy map's content per endpoint id, and the endpoint map's entries."""

    def __init__(self, maps: NodeMaps) -> None:
        self.maps = maps
        self.current: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for k, v in maps.policy_items().items():
            self.current[int(PolicyKeyC.from_buffer_copy(k).ep_id)][k] = v

    def apply(self, ep_id: int, policy: EndpointPolicy, *, bump: bool = True) -> ApplyStats:
        """Make endpoint ``ep_id``'s entries equal ``policy.entries``; returns what it wrote."""
        t0 = time.perf_counter()
        st = ApplyStats()
        cur = self.current[ep_id]
        d = diff(cur, encode_policy(ep_id, policy.entries))
        for k, v in d.upsert.items():
            self.maps.policy_update(k, v)
            cur[k] = v
        for k in d.delete:
            self.maps.policy_delete(k)
            cur.pop(k, None)
        st.upserts, st.deletes = len(d.upsert), len(d.delete)
        if d and bump:
            self.maps.bump_policy_revision()
        st.seconds = time.perf_counter() - t0
        return st

    def apply_delta(
        self,
        ep_id: int,
        upserts: Mapping[PolicyKey, PolicyValue],
        deletes: Iterable[PolicyKey],
        *,
        bump: bool = True,
    ) -> ApplyStats:
        """Write only what the engine says changed (the engine already folded deny-wins)."""
        t0 = time.perf_counter()
        st = ApplyStats()
        cur = self.current[ep_id]
        for k, v in upserts.items():
            kb, vb = encode_key(ep_id, k), encode_value(k, v)
            if cur.get(kb) != vb:
                self.maps.policy_update(kb, vb)
                cur[kb] = vb
                st.upserts += 1
        upserted = {encode_key(ep_id, k) for k in upserts}
        for k in deletes:
            kb = encode_key(ep_id, k)
            if kb in cur and kb not in upserted:
                self.maps.policy_delete(kb)
                del cur[kb]
                st.deletes += 1
        if (st.upserts or st.deletes) and bump:
            self.maps.bump_policy_revision()
        st.seconds = time.perf_counter() - t0
        return st

    def remove(self, ep_id: int) -> None:
        for k in list(self.current.pop(ep_id, {})):
            self.maps.policy_delete(k)
        self.maps.bump_policy_revision()

    def set_endpoint(self, ifindex: int, ep_id: int, identity: int, ip: str, policy: EndpointPolicy) -> None:
        info = EndpointInfo(identity=identity, ipv4=ip_to_be32(ip), ep_id=ep_id, flags=endpoint_flags(policy))
        self.maps.set_endpoint(ifindex, info)
