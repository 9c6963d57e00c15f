"""A rolling-window request budget shared by every caller of one upstream.

Halo-hosted allows 300 requests per rolling 5 minutes and answers 429 past that; a big sync must
not spend the budget a ticket action needs, and we would rather wait before sending than be told
to. One `RateBudget` per upstream session is awaited before every request, sync and actions alike.
"""

from __future__ import annotations

import asyncio
from collections import deque

from daemon.clock import Clock
from daemon.config.values import RateLimit

__all__ = ["RateBudget", "RateLimit"]


class NoRoom(Exception):
    """The budget has no room within the caller's `max_wait`; `retry_in` is the wait it
    would have needed (a lower bound when others queue for the same room)."""

    def __init__(self, retry_in: float):
        super().__init__(f"no room in the rate budget for {retry_in:.1f} s")
        self.retry_in = retry_in


class RateBudget:
    """Grants at most `limit.count` starts in any window of `limit.per` seconds, in FIFO order."""

    def __init__(
        self, limit: RateLimit, clock: Clock, *, margin: float = 0.02, reserve: float = 0.0
    ):
        """`margin` widens the window we count over (2% by default): the upstream counts a
        request when it arrives, we count it when it leaves, so at a window's edge a request
        delayed in transit would otherwise be counted in the next window by us and in this
        one by the upstream, and be answered 429.

        `reserve` is the share of the window kept for priority callers (actions): ordinary
        callers (syncs) may start only while fewer than `count - reserved` requests are in
        the window, so a sync that uses its whole share still leaves room for a reply."""
        if limit.count < 1 or limit.per <= 0:
            raise ValueError("rate limit needs a positive count and window")
        self.limit = limit
        self.window = limit.per * (1 + max(0.0, margin))
        self.reserved = min(limit.count - 1, int(limit.count * max(0.0, reserve)))
        if reserve > 0 and limit.count > 1:
            self.reserved = max(1, self.reserved)
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._priority_lock = asyncio.Lock()
        self.waited = 0.0  # total seconds callers spent waiting, for metrics and tests

    def _wait_needed(self, cap: int) -> float:
        now = self._clock.monotonic()
        while self._starts and now - self._starts[0] >= self.window:
            self._starts.popleft()
        if len(self._starts) < cap:
            return 0.0
        # The start whose expiry brings the count below `cap`.
        return self.window - (now - self._starts[len(self._starts) - cap])

    async def acquire(self, *, priority: bool = False, max_wait: float | None = None) -> None:
        """Wait until a request may start, then record it. Priority callers (actions) queue
        apart from the others and may use the reserved share too.

        With `max_wait`, raise `NoRoom` (recording nothing) rather than start later than
        `max_wait` seconds from now. Callers queued in one lane each check their own deadline,
        and the one ahead gives up by its earlier deadline, so no caller waits much longer
        than `max_wait` in all."""
        cap = self.limit.count if priority else self.limit.count - self.reserved
        lock = self._priority_lock if priority else self._lock
        deadline = None if max_wait is None else self._clock.monotonic() + max_wait
        async with lock:  # FIFO within a lane: later callers queue behind the one waiting
            while (wait := self._wait_needed(cap)) > 0:
                if deadline is not None and self._clock.monotonic() + wait > deadline:
                    raise NoRoom(wait)
                self.waited += wait
                await self._clock.sleep(wait)
            self._starts.append(self._clock.monotonic())

    def penalise(self, seconds: float) -> None:
        """After a 429 despite the budget, hold everyone back: fill the window from now on."""
        now = self._clock.monotonic()
        start = now + seconds - self.window
        self._starts.clear()
        self._starts.extend([start] * self.limit.count)
