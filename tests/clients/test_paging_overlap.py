"""The walk's closing recount overlaps the consumer's last writes, and never precedes a page.

`daemon.clients.paging.walk_pages` reads the total again at the end (docs/database.md, "What
the sync trusts" §3). It now starts that read as soon as every page has arrived, while the
consumer is still busy with the buffered ones; these tests pin down when it may and may not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from daemon.clients.paging import WalkReport, walk_pages


class FakeList:
    """`total` records in pages of `size`; every fetch takes `delay` (real time, tiny)."""

    label, upstream, first_page_size = "things", "fake", None

    def __init__(self, total: int, size: int, *, grow_to: int | None = None):
        self.rows = list(range(1, total + 1))
        self.size, self.total, self.grow_to = size, total, grow_to
        self.events: list[tuple[str, int]] = []
        self.delay = 0.002

    async def fetch(self, page_no: int, size: int | None) -> list[int]:
        await asyncio.sleep(self.delay)
        if self.grow_to and page_no == 2:  # records added while the walk runs
            self.rows = list(range(1, self.grow_to + 1))
        start = (page_no - 1) * self.size
        self.events.append(("page", page_no))
        return self.rows[start : start + self.size]

    def records(self, page: list[int]) -> Sequence[Any]:
        return [{"id": r} for r in page]

    def announced_total(self, page: list[int]) -> int | None:
        return None

    def announced_size(self, page: list[int]) -> int | None:
        return None

    async def count(self) -> int | None:
        await asyncio.sleep(self.delay)
        self.events.append(("count", len(self.rows)))
        return len(self.rows)

    def missing_total(self, page: list[int]) -> str | None:
        return "the count failed"


async def _consume_slowly(source: FakeList, report: WalkReport) -> list[int]:
    seen: list[int] = []
    async for page in walk_pages(source, window=4, report=report):
        seen.extend(page)
        source.events.append(("consumed", len(seen)))
        await asyncio.sleep(0.01)  # a slow write
    return seen


async def test_recount_starts_once_every_page_arrived_before_the_last_write() -> None:
    source = FakeList(total=100, size=10)
    report = WalkReport()
    seen = await _consume_slowly(source, report)
    assert seen == source.rows and report.complete
    counts = [i for i, (kind, _) in enumerate(source.events) if kind == "count"]
    assert len(counts) == 2  # the first total and the closing one
    closing = counts[1]
    pages = [i for i, (kind, _) in enumerate(source.events) if kind == "page"]
    assert closing > max(pages)  # after every page, the extra one included
    consumed = [i for i, (kind, _) in enumerate(source.events) if kind == "consumed"]
    assert closing < max(consumed)  # ...but while the consumer was still writing


async def test_a_list_that_grew_is_recounted_after_the_pages_that_follow() -> None:
    source = FakeList(total=100, size=10, grow_to=115)
    report = WalkReport()
    seen = await _consume_slowly(source, report)
    assert seen == list(range(1, 116))
    last_page = max(i for i, (kind, _) in enumerate(source.events) if kind == "page")
    closing = max(i for i, (kind, _) in enumerate(source.events) if kind == "count")
    assert closing > last_page
    assert report.incomplete is not None and "moved" in report.incomplete


async def test_a_consumer_that_stops_early_leaves_no_recount_running() -> None:
    source = FakeList(total=100, size=10)
    walk = walk_pages(source, window=4, report=WalkReport())
    async for _ in walk:
        await asyncio.sleep(0.05)  # every page arrives meanwhile: the recount starts
        break
    await walk.aclose()
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
