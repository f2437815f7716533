"""Which identity pairs policy requires authentication for (pure; no I/O).

A minimal reading of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy, enough for authd's
proactive path: rules with ``authentication.mode`` ``required`` (auth type 1) or
``test-always-fail`` (2), their subject (``endpointSelector``) and peers (``fromEndpoints`` /
``toEndpoints``, ``fromEntities`` / ``toEntities``; a rule naming no peer selects every peer). A
namespaced policy's selectors are confined to its namespace unless they name the namespace label,
as in Cilium. The policy engine's ``required_auth_pairs`` is used instead when it is available
(see :func:`required_pairs`). Malformed policies are skipped and reported, never raised.

A pair ``(local, remote, type)`` means: the node hosting an endpoint of ``local`` checks the auth
map for ``(local, remote, node of remote, type)`` — at ingress (rule on ``local`` from ``remote``)
and at egress (rule on ``local`` to ``remote``) alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nodemesh.messages.auth import AUTH_TYPE_ALWAYS_FAIL, AUTH_TYPE_SPIRE
from nodemesh.messages.identity import Identity

__all__ = [
    "AUTH_MODES",
    "NS_LABEL",
    "RESERVED_ENTITIES",
    "Pair",
    "PolicyPairs",
    "auth_pairs",
    "required_pairs",
]

Pair = tuple[int, int, int]  # (local identity, remote identity, auth type)

AUTH_MODES = {"required": AUTH_TYPE_SPIRE, "test-always-fail": AUTH_TYPE_ALWAYS_FAIL}
NS_LABEL = "io.kubernetes.pod.namespace"
#: Cilium's reserved identities by entity name (pkg/identity/numericidentity.go).
RESERVED_ENTITIES = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
}
_SOURCES = {"k8s", "any", "reserved", "unspec", "container", "cidr", "fqdn", "cilium"}


def _split(label: str) -> tuple[str, str, str]:
    """``k8s:app=web`` → (source, key, value); a key without a known source prefix is ``any``."""
    head, _, value = label.partition("=")
    source, sep, key = head.partition(":")
    if not sep or source not in _SOURCES:
        return ("any", head, value)
    return (source, key, value)


def _labels(identity: Identity) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for lab in identity.labels:
        src, key, value = _split(lab)
        out.setdefault(key, []).append((src, value))
    return out


def _values(labels: dict[str, list[tuple[str, str]]], sel_key: str) -> list[str]:
    src, key, _ = _split(sel_key + "=")
    return [v for s, v in labels.get(key, []) if src == "any" or s == src]


def _match(sel: Mapping[str, Any], labels: dict[str, list[tuple[str, str]]]) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if str(v) not in _values(labels, str(k)):
            return False
    for expr in sel.get("matchExpressions") or []:
        vals = _values(labels, str(expr.get("key", "")))
        want = [str(x) for x in expr.get("values") or []]
        op = expr.get("operator")
        if op == "In" and not any(v in want for v in vals):
            return False
        if op == "NotIn" and any(v in want for v in vals):
            return False
        if op == "Exists" and not vals:
            return False
        if op == "DoesNotExist" and vals:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def _names_namespace(sel: Mapping[str, Any]) -> bool:
    keys = list((sel.get("matchLabels") or {}).keys()) + [
        e.get("key", "") for e in sel.get("matchExpressions") or []
    ]
    return any(_split(str(k) + "=")[1] == NS_LABEL for k in keys)


def _select(
    sel: Mapping[str, Any],
    namespace: str,
    idents: list[tuple[Identity, dict[str, list[tuple[str, str]]]]],
    peer: bool,
) -> set[int]:
    """Identities a selector matches; a namespaced policy confines it to its namespace (for peers,
    unless the selector names the namespace label)."""
    confine = bool(namespace) and not (peer and _names_namespace(sel))
    out = set()
    for ident, labels in idents:
        if ident.reserved:
            continue
        if confine and namespace not in _values(labels, "k8s:" + NS_LABEL):
            continue
        if _match(sel, labels):
            out.add(ident.id)
    return out


def _entities(
    names: Iterable[Any], idents: list[tuple[Identity, dict[str, list[tuple[str, str]]]]]
) -> set[int]:
    out: set[int] = set()
    for name in names:
        if name in ("all", "cluster"):
            out |= {i.id for i, _ in idents if not i.reserved}
            if name == "all":
                out |= set(RESERVED_ENTITIES.values())
            else:
                out |= {
                    RESERVED_ENTITIES[n] for n in ("host", "remote-node", "health", "init", "kube-apiserver")
                }
        elif name in RESERVED_ENTITIES:
            out.add(RESERVED_ENTITIES[name])
    return out


def auth_pairs(
    policies: Iterable[Mapping[str, Any]], identities: Iterable[Identity]
) -> tuple[set[Pair], list[str]]:
    """Every (local, remote, auth type) the given CNP/CCNP objects require; plus errors (one per
    malformed policy, naming it)."""
    idents = [(i, _labels(i)) for i in identities]
    pairs: set[Pair] = set()
    errors: list[str] = []
    for obj in policies:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "") if obj.get("kind") != "CiliumClusterwideNetworkPolicy" else ""
        try:
            spec = obj.get("spec")
            specs = ([spec] if spec else []) + list(obj.get("specs") or [])
            for sp in specs:
                subjects = _select(sp.get("endpointSelector") or {}, ns, idents, peer=False)
                if not subjects:
                    continue
                for direction, ep_key, ent_key in (
                    ("ingress", "fromEndpoints", "fromEntities"),
                    ("egress", "toEndpoints", "toEntities"),
                ):
                    for rule in sp.get(direction) or []:
                        mode = (rule.get("authentication") or {}).get("mode")
                        auth_type = AUTH_MODES.get(str(mode))
                        if auth_type is None:
                            continue
                        sels, ents = rule.get(ep_key), rule.get(ent_key)
                        if sels is None and ents is None:
                            peers = {i.id for i, _ in idents}  # an L4-only rule: every peer
                        else:
                            peers = set()
                            for sel in sels or []:
                                peers |= _select(sel, ns, idents, peer=True)
                            peers |= _entities(ents or [], idents)
                        pairs |= {(s, p, auth_type) for s in subjects for p in peers}
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            errors.append(f"{obj.get('kind')} {ns}/{meta.get('name')}: {e}")
    return pairs, errors


def required_pairs(
    policies: Iterable[Mapping[str, Any]], identities: Iterable[Identity]
) -> tuple[set[Pair], list[str]]:
    """One-shot: the policy engine's ``required_auth_pairs`` when available, else :func:`auth_pairs`."""
    return PolicyPairs().compute(policies, identities, None)


class PolicyPairs:
    """The pairs policy requires, kept by the datapath's incremental policy engine (the same code
    that decides the datapath's auth bits, so authd and the datapath cannot disagree), fed only with
    what changed; falls back to :func:`auth_pairs` if the engine is missing or fails.

    Only identities hosted on this node are endpoints to the engine: authd needs pairs whose local
    side runs here, and resolving every identity as an endpoint costs O(identities) per change.
    """

    def __init__(self) -> None:
        try:
            from services.datapath.policy.incremental import PolicyEngine
            from services.datapath.policy.model import Endpoint
            from services.datapath.policy.parse import policy_ref
        except ImportError:  # the engine is optional for authd
            self._engine: Any = None
            return
        self._engine = PolicyEngine()
        self._endpoint = Endpoint
        self._policy_ref = policy_ref
        self._labels: dict[int, tuple[str, ...]] = {}
        self._policies: dict[Any, Mapping[str, Any]] = {}  # PolicyRef → object
        self._endpoints: set[int] = set()

    def compute(
        self,
        policies: Iterable[Mapping[str, Any]],
        identities: Iterable[Identity],
        hosted: Iterable[int] | None,
    ) -> tuple[set[Pair], list[str]]:
        policies, identities = list(policies), list(identities)
        if self._engine is None:
            return auth_pairs(policies, identities)
        try:
            return self._sync(policies, identities, hosted), []
        except Exception as e:  # an engine bug must not stop authd: use the minimal reading
            self.__init__()  # type: ignore[misc]  # start the engine afresh next time
            pairs, errors = auth_pairs(policies, identities)
            return pairs, [
                f"policy engine failed ({type(e).__name__}: {e}); used authd's own reading",
                *errors,
            ]

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
        objs = {self._policy_ref(o): o for o in policies}
        for ref in set(self._policies) - set(objs):
            eng.delete_policy(ref.kind, ref.namespace, ref.name)
        for ref, o in objs.items():
            if self._policies.get(ref) is not o:
                eng.upsert_policy(o)
        self._policies = objs
        want = {i for i in (labels if hosted is None else hosted) if i >= 256 and i in labels}
        for ident in self._endpoints - want:
            eng.delete_endpoint(f"identity:{ident}")
        for ident in want - self._endpoints:
            eng.upsert_endpoint(self._endpoint(key=f"identity:{ident}", identity=ident))
        self._endpoints = want
        return {(int(p.local), int(p.remote), int(p.auth_type)) for p in eng.required_auth_pairs()}
