"""Load only the part of pyroute2 the datapath uses (IPRoute, netns, tc), not the whole library.

``import pyroute2`` executes a package ``__init__`` that imports every socket family it has (NDB,
IPDB, nftables, WireGuard, nl80211, IPVS, …): ~6 MB of RSS and ~80 modules the datapath never
touches. :func:`core_only`, called by the service's entry point before anything imports pyroute2,
registers the package without running that ``__init__`` and sets the two names our modules take
from it (``IPRoute``, ``NetlinkError``); submodules (``pyroute2.netns``, ``pyroute2.config``, …)
import as usual. A process that already imported pyroute2 keeps it as it is.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["core_only"]


def core_only() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the import that follows reports it
    pkg = importlib.util.module_from_spec(spec)  # the package object, its __init__ not run
    sys.modules["pyroute2"] = pkg
    try:
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:  # another pyroute2 layout: fall back to the full package
        del sys.modules["pyroute2"]
        return
    pkg.IPRoute = IPRoute  # type: ignore[attr-defined]
    pkg.NetlinkError = NetlinkError  # type: ignore[attr-defined]
