"""Shared fixtures: a real nats-server per test, a connected Bus, root/BPF detection."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from nodemesh.bus import Bus, connect
from nodemesh.streams import provision
from testkit.natsserver import NatsServer

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Privileged tests must run in CI (root). Outside CI a non-root run skips them loudly;
    # in CI a non-root run is an error, so a skip can never hide a gap.
    if IS_ROOT:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("CI must run as root: privileged tests would be skipped")
    skip = pytest.mark.skip(reason="needs root (privileged test); CI runs these")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as s:
        yield s


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await connect(nats_server.url, name="test", max_wait=10)
    await provision(b.js)
    yield b
    await b.nc.close()
