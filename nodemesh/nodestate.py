"""What a node's datapath records about itself in its data directory (``datapath.json``).

Written by the datapath at start; read by ``nodemesh exec`` (to find a pod's namespace) and by the
cleanup that runs at ``nodemesh down`` — also after a crashed agent, which is why it is a file and
not only NATS state. Typed, so a reader and the writer cannot drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

__all__ = ["STATE_FILE", "DatapathState", "read_datapath_state", "write_datapath_state"]

STATE_FILE = "datapath.json"


class DatapathState(msgspec.Struct, kw_only=True):
    node: str
    #: Naming scope of this agent's netns, links and pins (:func:`nodemesh.netns.scope_for`).
    scope: str = ""
    #: Where the node's BPF maps are pinned.
    pin_dir: str = ""
    node_ip: str = ""
    local_mode: bool = True
    #: The host-side address pods' traffic to the host leaves from (``.1`` of the pod CIDR).
    router_ip: str = ""


def write_datapath_state(node_dir: str | Path, state: DatapathState) -> None:
    """Atomically replace ``<node_dir>/datapath.json``."""
    d = Path(node_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE_FILE + ".tmp")
    tmp.write_bytes(msgspec.json.encode(state))
    os.replace(tmp, d / STATE_FILE)


def read_datapath_state(node_dir: str | Path) -> DatapathState | None:
    """The recorded state, or None if there is none or it does not parse (nothing to act on)."""
    try:
        return msgspec.json.decode((Path(node_dir) / STATE_FILE).read_bytes(), type=DatapathState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
