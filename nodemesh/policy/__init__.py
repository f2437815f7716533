"""Pure policy engine: Kubernetes/Cilium network policies → per-endpoint policy-map entries.

No I/O here. ``parse`` turns policy objects into rules (errors returned, never raised), ``resolve``
computes every endpoint's map from scratch, ``incremental.PolicyEngine`` keeps state and returns only
what a change affects. ``model`` holds the types the datapath consumes. See docs/policy.md.
"""

from nodemesh.policy.resolve import required_auth_pairs, resolve

__all__ = ["required_auth_pairs", "resolve"]
