"""authd fixtures: node addresses on lo, a test CA, and a cluster of in-process authds."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from nodemesh.bus import Bus
from testkit.authd_cluster import Cluster
from testkit.natsserver import NatsServer
from testkit.spiffe_ca import SpiffeCA

ADDRESSES = ("127.0.50.1", "127.0.50.2", "127.0.50.3")


@pytest.fixture(scope="session")
def node_addresses() -> Iterator[tuple[str, ...]]:
    """The simulated nodes' addresses on lo (added if missing, and then removed again).

    127.0.0.0/8 is routed locally anyway, so these bind even without the explicit /32; adding it
    makes the node addresses visible in ``ip addr`` as local mode has them."""
    added = []
    have = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True
    ).stdout
    for a in ADDRESSES:
        if f" {a}/" not in have:
            r = subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"], capture_output=True)
            if r.returncode == 0:
                added.append(a)
    try:
        yield ADDRESSES
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], capture_output=True)


@pytest.fixture
def ca() -> SpiffeCA:
    return SpiffeCA()


@pytest.fixture
async def cluster(
    nats_server: NatsServer, bus: Bus, ca: SpiffeCA, node_addresses: tuple[str, ...]
) -> AsyncIterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="nm-authd-") as tmp:
        c = Cluster(bus, nats_server.url, ca, tmp)
        await c.start()
        await c.add_node("node-1", node_addresses[0])
        await c.add_node("node-2", node_addresses[1])
        try:
            yield c
        finally:
            await c.stop_all()
