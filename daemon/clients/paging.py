"""Fetch numbered pages concurrently, yielding them in order with bounded memory.

Used wherever the total is known up front (Blesta `getListCount`, Halo `record_count`, Billomat
`@total`): at most `window` pages are in flight or buffered, so a 100,000-record sync holds a few
pages, never the whole set, and the database sees pages in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def ordered_pages(
    fetch: Callable[[int], Awaitable[T]], pages: Iterable[int], *, window: int
) -> AsyncIterator[tuple[int, T]]:
    """Yield `(page, fetch(page))` in page order, keeping at most `window` fetches ahead.

    The first failure is raised at its place in the order; pending fetches are cancelled.
    """
    window = max(1, window)
    it = iter(pages)
    pending: dict[int, asyncio.Task[T]] = {}
    order: list[int] = []

    def top_up() -> None:
        while len(pending) < window:
            page = next(it, None)
            if page is None:
                return
            pending[page] = asyncio.ensure_future(fetch(page))
            order.append(page)

    try:
        top_up()
        while order:
            page = order.pop(0)
            task = pending.pop(page)
            result = await task
            top_up()
            yield page, result
    finally:
        for task in pending.values():
            task.cancel()
        if pending:
            await asyncio.gather(*pending.values(), return_exceptions=True)
