"""The one source of time.

Schedules, token expiries, cooldowns and backoffs all ask a `Clock`, so tests drive time with
`FakeClock.advance()` instead of sleeping. Nothing else in the package may call `time.time`,
`datetime.now` or `asyncio.sleep` (a ruff banned-api rule enforces it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time for records, monotonic time for intervals, and a sleep that honours both."""

    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time (returns at once for <= 0)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to.

    `advance(s)` moves both wall and monotonic time and wakes every sleeper whose deadline has
    passed. With `autojump=True` a sleep moves time itself and returns at once, which suits
    retry/backoff tests; every requested sleep is recorded in `sleeps` either way.
    """

    def __init__(self, start: datetime | None = None, *, autojump: bool = False):
        self._wall = start or datetime(2025, 1, 1, tzinfo=UTC)
        if self._wall.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._mono = 1000.0
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        if self.autojump:
            self._move(seconds)
            await asyncio.sleep(0)
            return
        if seconds == 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    def _move(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleepers that are now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._move(seconds)

    def set_wall(self, when: datetime) -> None:
        """Jump wall time only (a clock step), leaving monotonic time alone."""
        self._wall = when

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())
