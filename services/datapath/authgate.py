"""A new pod's workload starts only once the auth verdicts its policies need are in place.

authd authenticates the pairs policy requires as soon as the pod's ipcache entry appears
(docs/authd.md "Proactive"), but nothing made the pod wait for it: a workload whose first action is a
connect could send its SYN before the verdict reached the auth map, and that SYN was dropped
``AUTH_REQUIRED`` (the client retransmits a second later). So the datapath that plumbs the pod holds
its workload back, as it already does until the pod's policy is written, until every auth entry that
traffic of the pod's identity will be checked against is there:

* on this node, in the BPF auth map: ``(pod, peer, peer's node)`` for each pair the pod's own policy
  requires, and ``(local endpoint, pod, this node)`` for each local endpoint whose policy requires
  auth with the pod;
* on every other node hosting a peer whose policy requires auth with the pod: authd's grant of
  ``(peer, pod, this node)`` in KV ``auth`` under that node (its datapath writes its map from the
  same grant).

Which pairs need auth comes from the same policy engine authd uses (remote peers computed as
identity-only endpoints, as authd's engine holds them), so the gate waits for exactly what authd will
authenticate. The wait is bounded (``auth_gate_timeout``): after it the workload starts anyway and
the pod says so in its ``nodemesh.io/AuthReady`` condition; a missing verdict then costs that pod a
dropped first packet, never a pod that does not start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nodemesh.codec import decode
from nodemesh.errors import DecodeError
from nodemesh.labels import MIN_ALLOCATED
from nodemesh.messages.auth import AuthEntry
from nodemesh.messages.auth import AuthKey as AuthKeyMsg
from nodemesh.policy.model import LOCAL_IDENTITY_BASE, AuthPair
from nodemesh.streams import auth_key

__all__ = ["CONDITION", "GateResult", "Need", "needs", "wait"]

log = logging.getLogger("nodemesh.datapath.authgate")
CONDITION = "nodemesh.io/AuthReady"  # the pod condition that reports the gate's outcome
POLL = 0.02  # seconds between checks: a verdict lands within a handshake, tens of ms


@dataclass(frozen=True, order=True)
class Need:
    """One auth entry the pod's traffic will be checked against: ``holder``'s auth map must hold
    ``key`` (``key.remote_node`` as authd names it)."""

    holder: str
    key: AuthKeyMsg

    def __str__(self) -> str:
        k = self.key
        return f"{self.holder}:{k.local_identity}->{k.remote_identity}@{k.remote_node}/{k.auth_type}"


def _workload(identity: int) -> bool:
    return MIN_ALLOCATED <= identity < LOCAL_IDENTITY_BASE  # authd skips reserved and CIDR identities


def needs(
    me: str,
    identity: int,
    local_pairs: Iterable[AuthPair],
    remote_pairs: Iterable[AuthPair],
    id_nodes: Mapping[int, frozenset[str]],
    nodes: Iterable[str],
) -> set[Need]:
    """What must be in place before a pod of ``identity`` on node ``me`` talks (pure).

    ``local_pairs``: pairs of this node's endpoints (the engine's ``required_auth_pairs``);
    ``remote_pairs``: pairs that identities hosted on other nodes require toward ``identity``;
    ``id_nodes``: the nodes each identity has endpoints on (ipcache); ``nodes``: the known nodes."""
    known = set(nodes)
    out: set[Need] = set()

    def key(local: int, remote: int, node: str, auth_type: int) -> AuthKeyMsg:
        return AuthKeyMsg(local_identity=local, remote_identity=remote, remote_node=node, auth_type=auth_type)

    if not _workload(identity):
        return out
    for p in local_pairs:
        if not _workload(p.local) or not _workload(p.remote):
            continue
        if p.local == identity:  # the pod's own policy: checked here against each node of the peer
            out |= {
                Need(me, key(identity, p.remote, n, p.auth_type))
                for n in id_nodes.get(p.remote, ())
                if n in known
            }
        if p.remote == identity:  # a local endpoint's policy toward the pod
            out.add(Need(me, key(p.local, identity, me, p.auth_type)))
    for p in remote_pairs:
        if p.remote != identity or not _workload(p.local):
            continue
        out |= {
            Need(n, key(p.local, identity, me, p.auth_type))
            for n in id_nodes.get(p.local, ())
            if n in known and n != me
        }
    return out


@dataclass
class GateResult:
    ready: bool  # every need was met before the timeout
    seconds: float
    needs: int = 0
    missing: list[str] = field(default_factory=list)
    reason: str = ""

    def condition(self) -> dict[str, str]:
        if self.ready:
            msg = f"{self.needs} auth verdict(s) in place before start" if self.needs else "no auth required"
            return {"type": CONDITION, "status": "True", "reason": "AuthReady", "message": msg}
        return {
            "type": CONDITION,
            "status": "False",
            "reason": self.reason or "AuthTimeout",
            "message": f"started after {self.seconds:.1f}s without: {', '.join(self.missing[:8])}"[:1000],
        }


Compute = Callable[[], "set[Need] | None"]  # None: the pod's identity is not known yet
LocalHas = Callable[[AuthKeyMsg], bool]


async def wait(
    compute: Compute, local_has: LocalHas, kv: KeyValue | None, me: str, timeout: float
) -> GateResult:
    """Poll until every need is met or ``timeout`` passes. Needs are recomputed on each round: the
    pod's identity, a peer's endpoint or a policy may arrive while the pod waits."""
    t0 = time.monotonic()
    seen_remote: set[Need] = set()  # grants found in KV (a grant is not taken back within a start)
    while True:
        want = compute()
        missing: list[Need] = []
        if want is not None:
            for n in sorted(want):
                if n.holder == me:
                    if not local_has(n.key):
                        missing.append(n)
                elif n not in seen_remote:
                    if kv is not None and await _granted(kv, n):
                        seen_remote.add(n)
                    else:
                        missing.append(n)
            if not missing:
                return GateResult(ready=True, seconds=time.monotonic() - t0, needs=len(want))
        elapsed = time.monotonic() - t0
        if elapsed >= timeout:
            if want is None:
                return GateResult(False, elapsed, reason="IdentityTimeout", missing=["the pod's identity"])
            return GateResult(False, elapsed, needs=len(want), missing=[str(n) for n in missing])
        await asyncio.sleep(POLL)


async def _granted(kv: KeyValue, n: Need) -> bool:
    k = n.key
    try:
        entry = await kv.get(
            auth_key(n.holder, k.local_identity, k.remote_identity, k.remote_node, k.auth_type)
        )
    except KeyNotFoundError:  # also a deleted key (a revocation)
        return False
    try:
        return decode(entry.value or b"", AuthEntry).expires > time.time()
    except DecodeError:
        return False
