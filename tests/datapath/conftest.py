"""Fixtures for datapath tests: a simulated node (its own pins, loader and pods), cleaned up always."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from services.datapath.maps import ip_to_be32
from testkit.datapath_node import TNode, TPod, ingress_policy


@pytest.fixture
def pin_root() -> Iterator[str]:
    root = f"/sys/fs/bpf/nmtest-{os.getpid()}-{secrets.token_hex(3)}"
    os.makedirs(root)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_node(pin_root: str) -> Iterator[object]:
    nodes: list[TNode] = []
    token = secrets.token_hex(3)

    def make(suffix: str = "a", defines: dict[str, int] | None = None) -> TNode:
        n = TNode(f"t{token}{suffix}", pin_root, defines=defines or {}).start()
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            n.close()


__all__ = ["TNode", "TPod", "ingress_policy", "ip_to_be32"]


@pytest.fixture
def subnet() -> str:
    """A random /24 prefix ("10.x.y.") for this test's pods, away from local mode's 10.244.0.0/16."""
    import random

    return f"10.{random.randint(200, 250)}.{random.randint(0, 255)}."
