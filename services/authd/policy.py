"""Which identity pairs policy requires authentication for, from the shared policy engine.

authd asks :class:`nodemesh.policy.incremental.PolicyEngine` — the same code that decides the
datapath's auth bits — so authd and the datapath cannot disagree about which pairs need a
handshake. The engine is fed only with what changed.

A pair ``(local, remote, type)`` means: the node hosting an endpoint of ``local`` checks the auth
map for ``(local, remote, node of remote, type)`` — at ingress (rule on ``local`` from ``remote``)
and at egress (rule on ``local`` to ``remote``) alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from nodemesh.labels import MIN_ALLOCATED
from nodemesh.messages.identity import Identity
from nodemesh.policy.incremental import PolicyEngine
from nodemesh.policy.model import Endpoint, PolicyRef
from nodemesh.policy.parse import policy_ref

__all__ = ["Pair", "PolicyPairs"]

Pair = tuple[int, int, int]  # (local identity, remote identity, auth type)

log = logging.getLogger("nodemesh.authd.policy")


class PolicyPairs:
    """The pairs policy requires, kept by an incremental policy engine.

    Only identities hosted on this node are endpoints to the engine: authd needs pairs whose local
    side runs here, and resolving every identity as an endpoint costs O(identities) per change.
    Malformed policies are reported (one error each, naming it), never raised; the last valid
    version of a policy stays in force, as in the datapath. Should the engine itself fail, the last
    good pairs are kept (never an empty set, which would drop every pre-authenticated pair) and
    the engine is rebuilt from scratch on the next call.
    """

    def __init__(self) -> None:
        self._reset()
        self._last: set[Pair] = set()

    def _reset(self) -> None:
        self._engine = PolicyEngine()
        self._labels: dict[int, tuple[str, ...]] = {}
        self._policies: dict[PolicyRef, Mapping[str, Any]] = {}
        self._endpoints: set[int] = set()

    def compute(
        self,
        policies: Iterable[Mapping[str, Any]],
        identities: Iterable[Identity],
        hosted: Iterable[int] | None,
    ) -> tuple[set[Pair], list[str]]:
        """(pairs, errors) for these policies and identities; ``hosted`` None means every identity."""
        try:
            self._last = self._sync(list(policies), list(identities), hosted)
        except Exception as e:  # an engine bug must not stop authd or revoke what it has
            log.exception("policy engine failed; keeping the last pairs")
            self._reset()
            return set(self._last), [f"policy engine failed ({type(e).__name__}: {e}); kept the last pairs"]
        errors = [
            f"{ref.kind} {ref.namespace}/{ref.name}: {'; '.join(str(x) for x in errs)}"
            for ref, errs in sorted(self._engine.errors().items())
        ]
        return set(self._last), errors

    def _sync(
        self, policies: list[Mapping[str, Any]], identities: list[Identity], hosted: Iterable[int] | None
    ) -> set[Pair]:
        eng = self._engine
        labels = {i.id: tuple(i.labels) for i in identities}
        for ident in set(self._labels) - set(labels):
            eng.delete_identity(ident)
        for ident, labs in labels.items():
            if self._labels.get(ident) != labs:
                eng.upsert_identity(ident, list(labs))
        self._labels = labels
        # Key policies exactly as the engine does (it defaults a namespaced policy's namespace), so a
        # delete names what the upsert stored.
        objs = {policy_ref(o): o for o in policies}
        for ref in set(self._policies) - set(objs):
            eng.delete_policy(ref.kind, ref.namespace, ref.name)
        for ref, o in objs.items():
            if self._policies.get(ref) is not o:
                eng.upsert_policy(o)
        self._policies = objs
        want = {i for i in (labels if hosted is None else hosted) if i >= MIN_ALLOCATED and i in labels}
        for ident in self._endpoints - want:
            eng.delete_endpoint(f"identity:{ident}")
        for ident in want - self._endpoints:
            eng.upsert_endpoint(Endpoint(key=f"identity:{ident}", identity=ident))
        self._endpoints = want
        return {(int(p.local), int(p.remote), int(p.auth_type)) for p in eng.required_auth_pairs()}
