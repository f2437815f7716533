"""Kubernetes-style names for controller-created objects: pod-template-hash and random suffixes.

Kubernetes computes ``pod-template-hash`` as FNV-32a over a deep print of the Go PodTemplateSpec
(plus the Deployment's collisionCount), then ``rand.SafeEncodeString`` of its decimal form. The Go
deep print cannot be reproduced byte for byte from Python, so we hash the template's canonical
JSON (sorted keys) instead; the algorithm, its stability (same template → same hash) and the
encoding are Kubernetes'.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["compute_hash", "fnv32a", "safe_encode"]

_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(s: str) -> str:
    """``k8s.io/apimachinery/pkg/util/rand.SafeEncodeString``."""
    return "".join(_ALPHANUMS[ord(c) % len(_ALPHANUMS)] for c in s)


def compute_hash(template: dict[str, Any], collision_count: int | None = None) -> str:
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        # Kubernetes writes the collision count into the hasher as 4 little-endian bytes.
        data += int(collision_count).to_bytes(4, "little", signed=False)
    return safe_encode(str(fnv32a(data)))
