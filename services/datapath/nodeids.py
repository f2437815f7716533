"""Agent-local node ids (Cilium allocates them per agent too): node name ↔ 16-bit id, persisted.

The id appears in the BPF ipcache values and auth-map keys, which are pinned, so the mapping must
survive a restart: it is kept in ``<data-dir>/nodeids.json``. Id 0 is this node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["NodeIds"]


class NodeIds:
    def __init__(self, path: Path, own: str) -> None:
        self.path = path
        self.own = own
        self.ids: dict[str, int] = {}
        try:
            raw = json.loads(path.read_text())
            self.ids = {str(k): int(v) for k, v in raw.items() if 0 < int(v) < 65536}
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            self.ids = {}
        self.names = {v: k for k, v in self.ids.items()}

    def id_of(self, node: str) -> int:
        if not node or node == self.own:
            return 0
        if node not in self.ids:
            nid = next(i for i in range(1, 65536) if i not in self.names)
            self.ids[node], self.names[nid] = nid, node
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ids))
            os.replace(tmp, self.path)
        return self.ids[node]

    def name_of(self, nid: int) -> str:
        return self.own if nid == 0 else self.names.get(nid, "")
