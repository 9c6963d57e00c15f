from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.store import Store

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with Store.open(db_path, clock=clock) as s:
        yield s
