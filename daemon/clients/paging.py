"""Walk a paged upstream list: concurrently where the total is known, with a verdict at the end.

Every list API we sync pages by number (Blesta, Halo, Billomat, the Reseller search; NetSapiens by
offset, which is the same thing), and each can misbehave in the same few ways: a total that lies,
pages that never end, a page that repeats because the server ignores the page parameter, a page
that comes back empty in the middle. So one walker does it for all of them, and says at the end
whether it can vouch for having seen the whole list (`WalkReport.complete`) — the sync runner
tombstones nothing unless it can.

The rules:
- Page 1 and the separate count (Blesta `getListCount`) travel together; the page size is learned
  from the server (an echoed size, or page 1 when more records exist), never assumed.
- With a total, pages 2..N are requested concurrently *before* page 1 is handed to the consumer,
  so the upstream is busy while page 1 is written; up to `BUFFER_RECORDS` records are fetched
  ahead of the consumer, so its pauses do not stall the requests. We never ask past the page
  the total predicts, plus one to notice growth; if that extra page has records, the walk
  continues one page at a time until a short page. A total that predicts more than `max_pages`
  pages fails at once.
- Without a total, pages are read one at a time until an empty or short page. That ending is
  trusted only for a list that never has one (a bare array, the Reseller search): where the API
  promises a total (an envelope that carries it, a count method) and this walk got none, the
  walk still reads every page it can but reports itself incomplete (`missing_total`), since an
  empty page in the middle would otherwise look like the end of the list.
- A page identical to any earlier one raises `MalformedResponse`: the server is ignoring `page`
  and following it would loop forever. A failed page raises. Past `max_pages`, `LimitExceeded`.
- At the end the total is read again: once every page has arrived (while the consumer may still
  be writing the last ones, so that round trip overlaps with the writes), never before. The walk
  is complete only when every planned page came back full (the last one as the total predicts)
  and the total did not move; the runner then also checks the distinct ids it stored against
  that total.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from daemon.canonical import canonical_json, sha256_hex
from daemon.errors import LimitExceeded, MalformedResponse

T = TypeVar("T")
P = TypeVar("P")

DEFAULT_MAX_PAGES = 100_000
# Pages fetched ahead of the consumer, counted in records: enough that a consumer pausing (a
# commit's fsync, a WAL checkpoint) does not stop the fetching — 250 Blesta pages of 20, 100
# Halo pages of 50, but never fewer than the window (8 Billomat pages of 1000) — and still a
# bound that does not grow with the list.
BUFFER_RECORDS = 5_000


class OrderedPages(Generic[T]):
    """Fetch numbered pages with at most `window` in flight, yielded in page order.

    Fetching starts in the constructor, not on first iteration, so a caller can hand an earlier
    page to its consumer while these are already on the wire. At most `window + buffer` pages are
    held fetched-but-unconsumed, so memory holds a few pages, never the whole set. The first
    failure is raised at its place in the order; `aclose()` cancels whatever is still pending.
    """

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[T]],
        pages: Iterable[int],
        *,
        window: int,
        buffer: int | None = None,
        on_drained: Callable[[dict[int, asyncio.Future[T]]], None] | None = None,
    ):
        self._fetch = fetch
        self._window = max(1, window)
        self._ahead = self._window if buffer is None else max(0, buffer)
        self._it = iter(pages)
        self._exhausted = False
        self._closing = False
        self._tasks: dict[int, asyncio.Future[T]] = {}
        self._order: deque[int] = deque()
        self._running = 0
        self._on_drained = on_drained
        self._top_up()

    def _finished(self, _: asyncio.Future[T]) -> None:
        self._running -= 1
        self._top_up()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._exhausted and not self._running and not self._closing and self._on_drained:
            # Every page has been fetched (the consumer may still be busy with earlier ones):
            # tell the caller, with the pages not consumed yet (all done).
            drained, self._on_drained = self._on_drained, None
            drained(dict(self._tasks))

    def _top_up(self) -> None:
        while (
            not self._exhausted
            and self._running < self._window
            and len(self._tasks) < self._window + self._ahead
        ):
            try:
                page = next(self._it)
            except StopIteration:
                self._exhausted = True
                return
            task = asyncio.ensure_future(self._fetch(page))
            self._running += 1
            task.add_done_callback(self._finished)
            self._tasks[page] = task
            self._order.append(page)

    def __aiter__(self) -> OrderedPages[T]:
        return self

    async def __anext__(self) -> tuple[int, T]:
        if not self._order:
            raise StopAsyncIteration
        page = self._order.popleft()
        task = self._tasks[page]
        try:
            result = await task
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._tasks.pop(page, None)
        self._top_up()
        self._check_drained()
        return page, result

    async def aclose(self) -> None:
        self._exhausted = True  # no new fetches from callbacks once we are closing
        self._closing = True
        self._order.clear()
        pending = list(self._tasks.values())
        self._tasks.clear()
        for t in pending:
            if not t.done():
                t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def ordered_pages(
    fetch: Callable[[int], Awaitable[T]],
    pages: Iterable[int],
    *,
    window: int,
    buffer: int | None = None,
) -> AsyncGenerator[tuple[int, T], None]:
    """`OrderedPages` as an async generator (closing it cancels the pending fetches)."""
    stream = OrderedPages(fetch, pages, window=window, buffer=buffer)
    try:
        async for item in stream:
            yield item
    finally:
        await stream.aclose()


class PagedList(Protocol[P]):
    """One upstream list, as the walker needs to see it."""

    @property
    def label(self) -> str:
        """What is being listed, for messages (`clients/getList`, `Tickets`)."""
        ...

    @property
    def upstream(self) -> str: ...

    @property
    def first_page_size(self) -> int | None:
        """The page size to ask for on page 1; None where the server fixes it (Blesta)."""
        ...

    async def fetch(self, page_no: int, size: int | None) -> P:
        """One page (1-based). Raises on failure; never returns an error as a page."""
        ...

    def records(self, page: P) -> Sequence[Any]: ...

    def announced_total(self, page: P) -> int | None:
        """The total across pages the page itself carries (Halo, Billomat), else None."""
        ...

    def announced_size(self, page: P) -> int | None:
        """The page size the server says it used (echoed `page_size`, `@per_page`)."""
        ...

    async def count(self) -> int | None:
        """The total from a separate count call (Blesta `getListCount`); None when the API
        has none or it failed."""
        ...

    def missing_total(self, first: P) -> str | None:
        """Why this walk has no total although the list promises one (page 1 is an envelope
        without its count, the count call failed), or None for a list that has none."""
        ...


@dataclass
class WalkReport:
    """What one walk saw, for the runner's verdict on completeness."""

    label: str = ""
    total_start: int | None = None
    total_end: int | None = None
    page_size: int | None = None
    planned_pages: int | None = None
    pages: int = 0
    records: int = 0
    incomplete: str | None = None
    finished: bool = False

    @property
    def complete(self) -> bool:
        """Every page answered, the walk ended where the total (or a short page) says, and the
        total did not move; distinct ids are the runner's to check against `total_start`."""
        return self.finished and self.incomplete is None

    def mark_incomplete(self, reason: str) -> None:
        if self.incomplete is None:
            self.incomplete = reason


def page_signature(rows: Sequence[Any]) -> str:
    """A page's identity: its ids in order when every row has one, else its content."""
    ids = [r.get("id") if isinstance(r, dict) else None for r in rows]
    material: Any = ids if all(i is not None for i in ids) else list(rows)
    try:
        return sha256_hex(canonical_json(material, default=str))
    except ValueError:  # NaN in a row: compare its text instead (the store will refuse it)
        return sha256_hex(repr(material))


class _RepeatGuard:
    def __init__(self, label: str, upstream: str):
        self.label, self.upstream = label, upstream
        self._seen: dict[str, int] = {}

    def check(self, page_no: int, rows: Sequence[Any]) -> None:
        if not rows:
            return
        sig = page_signature(rows)
        earlier = self._seen.get(sig)
        if earlier is not None:
            raise MalformedResponse(
                f"{self.label} page {page_no} repeats page {earlier}: the server ignores "
                "paging; refusing to loop",
                upstream=self.upstream,
            )
        self._seen[sig] = page_no


def _cap(report: WalkReport, page_no: int, max_pages: int, upstream: str) -> None:
    if page_no > max_pages:
        raise LimitExceeded(
            f"{upstream}: {report.label} has more than max_pages ({max_pages}) pages; stopped"
        )


async def _first_and_count(source: PagedList[P]) -> tuple[P, int | None]:
    counting = asyncio.ensure_future(source.count())
    try:
        first = await source.fetch(1, source.first_page_size)
        counted = await counting
    finally:
        counting.cancel()  # no-op when done; gather marks a stored exception as seen
        await asyncio.gather(counting, return_exceptions=True)
    return first, counted


async def _recount(source: PagedList[P]) -> int | None:
    counted = await source.count()
    if counted is not None:
        return counted
    return source.announced_total(await source.fetch(1, 1))


async def walk_pages(
    source: PagedList[P],
    *,
    window: int,
    max_pages: int = DEFAULT_MAX_PAGES,
    report: WalkReport | None = None,
) -> AsyncGenerator[P, None]:
    """Yield each page that has records, in order (see the module docstring for the rules)."""
    report = report if report is not None else WalkReport()
    report.label = source.label
    early: list[asyncio.Future[int | None]] = []  # the end's total, read once every page is in
    walk = _walk(source, window=window, max_pages=max_pages, report=report, early=early)
    try:
        async with aclosing(walk) as pages:
            async for page in pages:
                yield page
    finally:
        for task in early:
            task.cancel()  # no-op once done
        await asyncio.gather(*early, return_exceptions=True)


async def _walk(
    source: PagedList[P],
    *,
    window: int,
    max_pages: int,
    report: WalkReport,
    early: list[asyncio.Future[int | None]],
) -> AsyncGenerator[P, None]:
    guard = _RepeatGuard(source.label, source.upstream)
    first, counted = await _first_and_count(source)
    total = source.announced_total(first)
    total = counted if total is None else total
    report.total_start = total
    if total is None:
        missing = source.missing_total(first)
        if missing is not None:
            report.mark_incomplete(f"no total: {missing}")
    rows = source.records(first)
    n1 = len(rows)
    if n1 == 0:
        if total:
            report.mark_incomplete(f"page 1 is empty but the total says {total}")
        await _finish(source, report, early)
        return
    guard.check(1, rows)
    asked = source.announced_size(first) or source.first_page_size
    size = asked or n1
    if total is not None and total > n1:
        size = min(size, n1)  # a server cap below what we asked for
    report.page_size = size
    report.pages, report.records = 1, n1
    last_page, last_len = 1, n1
    more = True  # whether the sequential walk below may ask for the next page
    if total is not None and total > n1:
        planned = math.ceil(total / size)
        report.planned_pages = planned
        if planned > max_pages:
            raise LimitExceeded(
                f"{source.upstream}: {source.label} total {total} predicts {planned} pages, "
                f"more than max_pages ({max_pages}); not starting"
            )

        async def fetch(n: int) -> P:
            return await source.fetch(n, size)

        def drained(unconsumed: dict[int, asyncio.Future[P]]) -> None:
            # Every page has arrived while the consumer is still writing earlier ones: when the
            # extra page is empty (the walk ends here), read the total again now rather than
            # after the last write. It is still read after every page was.
            extra = unconsumed.get(planned + 1)
            if extra is None or any(t.cancelled() or t.exception() for t in unconsumed.values()):
                return
            try:
                grew = bool(source.records(extra.result()))
            except Exception:  # the walk itself will meet this page and say what is wrong
                return
            if not grew:
                early.append(asyncio.ensure_future(_recount(source)))

        # One page past the prediction tells us whether the list grew while we walked.
        prefetch = OrderedPages(
            fetch,
            range(2, planned + 2),
            window=window,
            buffer=max(window, BUFFER_RECORDS // size),
            on_drained=drained,
        )
        try:
            yield first
            async for n, page in prefetch:
                rows = source.records(page)
                if not rows:
                    if n <= planned:
                        report.mark_incomplete(
                            f"page {n} of {planned} is empty: the total said {total}"
                        )
                    more = False
                    break
                guard.check(n, rows)
                if n < planned and len(rows) < size:
                    report.mark_incomplete(f"page {n} of {planned} is short ({len(rows)} rows)")
                report.pages += 1
                report.records += len(rows)
                last_page, last_len = n, len(rows)
                yield page
        finally:
            await prefetch.aclose()
        if last_page == planned and last_len != total - (planned - 1) * size:
            report.mark_incomplete(
                f"the last page holds {last_len} rows; the total predicts "
                f"{total - (planned - 1) * size}"
            )
    else:
        yield first
        if asked is not None and n1 != asked:
            # Short: the last page. Longer than asked: the server ignored the page size and sent
            # everything at once (some bare-array endpoints); asking again would repeat it.
            more = False
        # Otherwise (no total, a full first page, a page of unknown size that holds exactly
        # the total, or a total *smaller* than page 1) one more page shows whether there is
        # more: a total that lies low must not end the walk.
    # Sequential: no total, or the list grew past it.
    while more and last_len >= size:
        n = last_page + 1
        _cap(report, n, max_pages, source.upstream)
        page = await source.fetch(n, size)
        rows = source.records(page)
        if not rows:
            break
        guard.check(n, rows)
        report.pages += 1
        report.records += len(rows)
        last_page, last_len = n, len(rows)
        yield page
    await _finish(source, report, early)


async def _finish(
    source: PagedList[P], report: WalkReport, early: list[asyncio.Future[int | None]]
) -> None:
    if report.total_start is not None:
        # `early`: read once every page had arrived, while the last ones were being written
        report.total_end = await (early[0] if early else _recount(source))
        if report.total_end != report.total_start:
            report.mark_incomplete(
                f"the total moved from {report.total_start} to {report.total_end} during the walk"
            )
    report.finished = True
