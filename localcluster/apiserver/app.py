"""The local API server process: store + HTTP server + controllers + manifest directory."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from localcluster.apiserver.controllers import ControllerManager
from localcluster.apiserver.controllers.bootstrap import bootstrap
from localcluster.apiserver.manifests import ManifestDir
from localcluster.apiserver.server import ApiServer
from localcluster.apiserver.store import Store

__all__ = ["LocalApi"]

log = logging.getLogger("localcluster.apiserver")


class LocalApi:
    """One local API server. ``await start()``; ``url`` is then where it listens."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        nodes: int = 1,
        manifests: str | Path | None = None,
        lb_pool: str = "127.0.100.0/24",
        history: int = 10_000,
        bookmark_interval: float = 5.0,
        controllers: bool = True,
        dns_addr: str = "",
        node_grace: float = 0.0,
        toleration_seconds: int = 300,
        token: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.nodes = nodes
        self.dns_addr = dns_addr
        self.lb_pool = lb_pool
        self.store = Store(self.data_dir / "api", history=history)
        # node_grace > 0: node agents post heartbeats and the node lifecycle controller watches them.
        self.node_grace = node_grace if controllers else 0.0
        if self.node_grace > 0:
            self.store.default_toleration_seconds = toleration_seconds
        self.server = ApiServer(self.store, bookmark_interval=bookmark_interval, token=token)
        self.controllers = (
            ControllerManager(self.store, dns_addr=dns_addr, node_grace=node_grace) if controllers else None
        )
        self.manifests = ManifestDir(self.store, manifests) if manifests else None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        bootstrap(self.store, self.nodes, self.dns_addr, heartbeats=self.node_grace > 0, lb_pool=self.lb_pool)
        if self.controllers is not None:
            await self.controllers.start()
        if self.manifests is not None:
            await self.manifests.start()
        self._runner = web.AppRunner(self.server.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("local API server on %s (resourceVersion %d)", self.url, self.store.rv)

    async def stop(self) -> None:
        self.server.close_watches()
        if self.manifests is not None:
            await self.manifests.stop()
        if self.controllers is not None:
            await self.controllers.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
