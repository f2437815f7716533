"""Every service's cell, for the tools that deploy them all (NATS users, compose, manifests)."""

from nodemesh.cell import Cell
from services.authd.cell import CELL as AUTHD
from services.datapath.cell import CELL as DATAPATH
from services.dns.cell import CELL as DNS
from services.identity.cell import CELL as IDENTITY
from services.operator.cell import CELL as OPERATOR
from services.watcher.cell import CELL as WATCHER
from services.xds.cell import CELL as XDS

__all__ = ["AUTHD", "CELLS", "DATAPATH", "DNS", "IDENTITY", "OPERATOR", "WATCHER", "XDS"]

CELLS: tuple[Cell, ...] = (WATCHER, IDENTITY, XDS, OPERATOR, DNS, DATAPATH, AUTHD)
