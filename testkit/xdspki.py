"""The xDS node credentials for tests: a throw-away PKI (nodemesh/xdspki.py) in a temporary directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nodemesh.xdspki import ensure_pki, node_files, server_files

__all__ = ["TestPki"]


class TestPki:
    """A CA, xds's serving certificate and client certificates for ``nodes`` (more on demand)."""

    __test__ = False  # not a pytest class

    def __init__(self, nodes: tuple[str, ...] = ("node-1", "node-2", "node-3")) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="nm-xdspki-")
        self.dir = Path(self._tmp.name) / "pki"
        ensure_pki(self.dir, list(nodes), ["127.0.0.1", "localhost"])

    @property
    def server_dir(self) -> str:
        return str(server_files(self.dir).dir)

    def node_dir(self, node: str) -> str:
        """``node``'s credential directory (issued now if it has none yet)."""
        files = node_files(self.dir, node)
        if not files.exists():
            ensure_pki(self.dir, [node], [])
        return str(files.dir)

    def close(self) -> None:
        self._tmp.cleanup()
