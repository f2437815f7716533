"""The translation pipeline: ingestion → model → Envoy resources (filled in step by step)."""

from __future__ import annotations

from .types import TranslateInput, Translation

__all__ = ["run"]


def run(inp: TranslateInput) -> Translation:
    return Translation()
