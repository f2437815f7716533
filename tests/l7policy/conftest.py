"""Fixtures for L7 policy tests: the datapath tests' simulated node (pins, loader, pods)."""

from tests.datapath.conftest import make_node, pin_root, subnet

__all__ = ["make_node", "pin_root", "subnet"]
