from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from localcluster.apiserver.app import LocalApi
from tests.localapi.helpers import Client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[LocalApi]:
    a = LocalApi(tmp_path, nodes=2, bookmark_interval=0.2)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


@pytest.fixture
async def client(api: LocalApi) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as s:
        yield Client(api.url, s)
