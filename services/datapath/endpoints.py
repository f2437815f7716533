"""Writes endpoints and their policy into the pinned maps, incrementally.

:class:`PolicyWriter` keeps, per endpoint id, the exact bytes it last wrote (rebuilt from the pinned
map at start, so a restarted agent diffs against what is really enforced) and applies only the
difference. Order makes every intermediate state safe: new and changed entries first, deletions
after, then one revision bump so established flows re-check (see ``nm_tc.c``). An endpoint's flags
(enforce ingress/egress) are written after its entries, so it never enforces a half-written map.

A full policy map fails closed: when an entry cannot be written (the trie is at its size), the
endpoint is marked ``EP_FAIL_CLOSED`` at once (the programs then deny all its traffic, established
flows included after the revision bump) and stays so until a full :meth:`PolicyWriter.apply` of its
policy succeeds — never a half-written map where older allows outlive newer denies.
"""

from __future__ import annotations

import errno
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.bpfsys import BpfError
from services.datapath.maps import (
    EP_ENFORCE_EGRESS,
    EP_ENFORCE_INGRESS,
    EP_FAIL_CLOSED,
    EndpointInfo,
    NodeMaps,
    PolicyKeyC,
    ip_to_be32,
)
from services.datapath.plan import diff, encode_key, encode_policy, encode_value

__all__ = ["ApplyStats", "PolicyWriter", "endpoint_flags"]

#: what the kernel answers when an LPM trie is at max_entries (ENOSPC) or cannot allocate a node
_FULL = (errno.ENOSPC, errno.E2BIG, errno.ENOMEM)


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
        self.failed: dict[int, str] = {}  # ep id → why its policy could not be written (fails closed)
        self.full_writes = 0  # policy writes refused for want of space, ever
        self._endpoint: dict[int, tuple[int, EndpointInfo]] = {}  # ep id → (ifindex, info) last written

    def _upsert(self, ep_id: int, cur: dict[bytes, bytes], k: bytes, v: bytes) -> bool:
        """Write one entry; on a full map close the endpoint and return False."""
        try:
            self.maps.policy_update(k, v)
        except BpfError as e:
            if e.errno not in _FULL:
                raise
            self.full_writes += 1
            self.failed[ep_id] = (
                f"policy map full ({self.maps.policy.max_entries} entries on this node): {e.strerror}"
            )
            self._write_flags(ep_id)
            return False
        cur[k] = v
        return True

    def _write_flags(self, ep_id: int) -> None:
        held = self._endpoint.get(ep_id)
        if held is None:  # not written yet: set_endpoint will carry the flag
            return
        ifindex, info = held
        self.set_endpoint_info(ifindex, info)

    def apply(self, ep_id: int, policy: EndpointPolicy, *, bump: bool = True) -> ApplyStats:
        """Make endpoint ``ep_id``'s entries equal ``policy.entries``; returns what it wrote."""
        t0 = time.perf_counter()
        st = ApplyStats()
        cur = self.current[ep_id]
        d = diff(cur, encode_policy(ep_id, policy.entries))
        was_failed = ep_id in self.failed
        ok = True
        # deletions first when the endpoint is closed already: they free room for its new entries
        if was_failed:
            for k in d.delete:
                self.maps.policy_delete(k)
                cur.pop(k, None)
        for k, v in d.upsert.items():
            if not self._upsert(ep_id, cur, k, v):
                ok = False
                break
            st.upserts += 1
        for k in d.delete:
            if k in cur:
                self.maps.policy_delete(k)
                cur.pop(k, None)
        st.deletes = len(d.delete)
        if ok and was_failed:
            del self.failed[ep_id]  # the whole policy is in place: open again
            self._write_flags(ep_id)
        if bump and (st.upserts or st.deletes or ok == was_failed):
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
        ok = ep_id not in self.failed
        for k, v in upserts.items():
            kb, vb = encode_key(ep_id, k), encode_value(k, v)
            if cur.get(kb) != vb:
                if not self._upsert(ep_id, cur, kb, vb):
                    ok = False
                    break
                st.upserts += 1
        if not ok:  # closed: a full apply() of the endpoint's policy reopens it
            if bump:
                self.maps.bump_policy_revision()
            st.seconds = time.perf_counter() - t0
            return st
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
        self.failed.pop(ep_id, None)
        self._endpoint.pop(ep_id, None)
        self.maps.bump_policy_revision()

    def set_endpoint(self, ifindex: int, ep_id: int, identity: int, ip: str, policy: EndpointPolicy) -> None:
        info = EndpointInfo(identity=identity, ipv4=ip_to_be32(ip), ep_id=ep_id, flags=endpoint_flags(policy))
        self.set_endpoint_info(ifindex, info)

    def set_endpoint_info(self, ifindex: int, info: EndpointInfo) -> None:
        """Write the endpoint entry, closed (``EP_FAIL_CLOSED``) while its policy is not in place."""
        ep_id = int(info.ep_id)
        self._endpoint[ep_id] = (ifindex, EndpointInfo.from_buffer_copy(bytes(info)))
        out = EndpointInfo.from_buffer_copy(bytes(info))
        out.flags = (out.flags & ~EP_FAIL_CLOSED) | (EP_FAIL_CLOSED if ep_id in self.failed else 0)
        self.maps.set_endpoint(ifindex, out)
