"""``nodemesh service list``: what one node's LB maps serve, with the Service each frontend is for.

The maps are the truth about the datapath (what ``connect()`` is rewritten to), but they hold no
names: slot 0 of a frontend has its reverse-NAT id. The agent therefore records, next to its
``datapath.json``, which Service each reverse-NAT id was written for (:data:`NAMES_FILE`, replaced
atomically when a frontend's id or Service changes). :func:`list_services` (pure) joins the two: a
frontend is named only if the record has the same id *and* frontend, so a stale record never puts
a wrong name on what the kernel serves (the name is then empty).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from services.datapath.lb.diff import LbState
from services.datapath.lb.model import (
    BE_TERMINATING,
    F_AFFINITY,
    F_L7,
    F_LOCAL,
    TYPE_FLAGS,
    Frontend,
    ServiceRef,
)

__all__ = [
    "NAMES_FILE",
    "BackendRow",
    "FrontendName",
    "ServiceRow",
    "list_services",
    "read_names",
    "write_names",
]

NAMES_FILE = "lb-services.json"


class FrontendName(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One frontend's Service, as the agent wrote it (agent → CLI, through the node directory)."""

    id: int  # reverse-NAT id
    frontend: str  # addr:port/PROTO
    namespace: str
    name: str
    port_name: str = ""


class BackendRow(msgspec.Struct, kw_only=True):
    id: int
    address: str  # addr:port/PROTO
    state: str  # active | terminating


class ServiceRow(msgspec.Struct, kw_only=True):
    id: int  # reverse-NAT id (Cilium's service ID)
    frontend: str  # addr:port/PROTO
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalIP
    namespace: str  # "" when the agent's record does not name this frontend
    name: str
    port_name: str
    backends: list[BackendRow]
    session_affinity: bool = False
    traffic_policy_local: bool = False
    node: str = ""
    l7_proxy_port: int = 0  # lb-l7: the backend is the node's Envoy listener on this port


def write_names(node_dir: str | Path, names: Mapping[Frontend, tuple[int, ServiceRef]]) -> None:
    d = Path(node_dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = [
        FrontendName(
            id=rid, frontend=str(fe), namespace=ref.namespace, name=ref.name, port_name=ref.port_name
        )
        for fe, (rid, ref) in sorted(names.items(), key=lambda kv: kv[1][0])
    ]
    tmp = d / (NAMES_FILE + ".tmp")
    tmp.write_bytes(msgspec.json.encode(rows))
    os.replace(tmp, d / NAMES_FILE)


def read_names(node_dir: str | Path) -> dict[int, FrontendName]:
    """The agent's record by reverse-NAT id ({} when absent or unreadable: frontends go unnamed)."""
    try:
        rows = msgspec.json.decode((Path(node_dir) / NAMES_FILE).read_bytes(), type=list[FrontendName])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    return {r.id: r for r in rows}


def _type(flags: int) -> str:
    return next((name for bit, name in TYPE_FLAGS.items() if flags & bit), "")


def list_services(state: LbState, names: Mapping[int, FrontendName], node: str = "") -> list[ServiceRow]:
    """Every frontend with slot 0 in the maps, its backends in slot order, ordered by id."""
    rows = []
    for fe, entry in state.svc.items():
        z = entry.zero
        if z is None:  # leftovers of an interrupted write: not served
            continue
        n = names.get(z.rev_nat_id)
        named = n is not None and n.frontend == str(fe)
        backends = []
        for bid in entry.chosen():
            be = state.backends.get(bid)
            if be is None:
                continue  # the program counts this as inconsistent and refuses
            be_state = "terminating" if be[1] == BE_TERMINATING else "active"
            backends.append(BackendRow(id=bid, address=str(be[0]), state=be_state))
        rows.append(
            ServiceRow(
                id=z.rev_nat_id,
                frontend=str(fe),
                type=_type(z.flags),
                namespace=n.namespace if n is not None and named else "",
                name=n.name if n is not None and named else "",
                port_name=n.port_name if n is not None and named else "",
                backends=backends,
                session_affinity=bool(z.flags & F_AFFINITY),
                traffic_policy_local=bool(z.flags & F_LOCAL),
                node=node,
                l7_proxy_port=z.l7_proxy_port if z.flags & F_L7 else 0,
            )
        )
    return sorted(rows, key=lambda r: (r.id, r.frontend))
