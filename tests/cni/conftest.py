"""Fixtures for the Kubernetes-mode tests: a KubeCluster (local API server, watcher, identity, datapaths
in Kubernetes mode, kubelets calling real CNI chains), cleaned up always."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.datapath.cleanup import cleanup_all
from testkit.kubecluster import KubeCluster
from testkit.natsserver import NatsServer

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@pytest.fixture
def pin_root() -> Iterator[str]:
    root = f"/sys/fs/bpf/nmtest-{os.getpid()}-{secrets.token_hex(3)}"
    os.makedirs(root)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def host_forwarding() -> Iterator[None]:
    """The upstream ptp and bridge plugins switch on net.ipv4.ip_forward host-wide (nodemesh itself
    only sets forwarding per pod device): put it back as it was."""
    before = Path(IP_FORWARD).read_text().strip()
    try:
        yield
    finally:
        if Path(IP_FORWARD).read_text().strip() != before:
            Path(IP_FORWARD).write_text(before)


MakeCluster = Callable[..., Awaitable[KubeCluster]]


@pytest.fixture
async def kube(
    nats_server: NatsServer, pin_root: str, tmp_path: Path, host_forwarding: None
) -> AsyncIterator[MakeCluster]:
    made: list[KubeCluster] = []

    async def make(chain: str, **kw: Any) -> KubeCluster:
        c = KubeCluster(tmp_path / f"k{len(made)}", nats_server.url, pin_root, chain, **kw)
        made.append(c)
        await c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            with contextlib.suppress(Exception):
                await c.stop()
            cleanup_all(str(c.tmp))
