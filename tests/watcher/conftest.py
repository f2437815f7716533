from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localcluster.apiserver.app import LocalApi


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[LocalApi]:
    a = LocalApi(tmp_path / "data", nodes=2, bookmark_interval=0.5)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()
