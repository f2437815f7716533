"""Prometheus text as tests read it: samples by name with label subsets (what a PromQL sum does)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["families", "label_names", "total"]


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)] for every sample in the exposition ``text``."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    samples = families(text).get(name, [])
    return sum(v for lbls, v in samples if all(lbls.get(k) == want for k, want in labels.items()))


def label_names(text: str, name: str) -> set[str]:
    """The label names ``name``'s samples carry."""
    return {k for lbls, _ in families(text).get(name, []) for k in lbls}
