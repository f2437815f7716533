"""Fixtures for L7 policy tests: the datapath tests' simulated node (pins, loader, pods)."""

from testkit.datapath_node import make_node, pin_root, subnet

__all__ = ["make_node", "pin_root", "subnet"]
