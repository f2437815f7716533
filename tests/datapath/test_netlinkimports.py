"""The datapath process loads pyroute2's core only (services/datapath/netlinkimports.py) and its
netlink still works: checked in a fresh interpreter, as the service's entry point runs."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from services.datapath.netlinkimports import core_only
core_only()
import services.datapath.app, services.datapath.cleanup
from pyroute2 import IPRoute, NetlinkError, netns
with IPRoute() as ipr:
    links = [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]
print(json.dumps({"links": links, "mods": sorted(m for m in sys.modules if m.startswith("pyroute2"))}))
"""


def test_datapath_imports_pyroute2_core_only_and_netlink_works() -> None:
    probe = [sys.executable, "-c", _PROBE]
    out = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "lo" in res["links"]
    mods = set(res["mods"])
    assert "pyroute2.iproute.linux" in mods and "pyroute2.netns" in mods
    for unused in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.netlink.nfnetlink.nftsocket", "pyroute2.ipvs"):
        assert unused not in mods
