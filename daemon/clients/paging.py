"""Fetch numbered pages concurrently, yielding them in order with bounded memory.

Used wherever the total is known up front (Blesta `getListCount`, Halo `record_count`, Billomat
`@total`). Two bounds: at most `window` requests in flight, and at most `window + buffer` pages
fetched but not yet consumed. A finished fetch starts the next one at once — it does not wait
for the consumer — so the upstream stays busy while the consumer writes a page to the database,
yet a 100,000-record sync holds a few pages, never the whole set.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def ordered_pages(
    fetch: Callable[[int], Awaitable[T]],
    pages: Iterable[int],
    *,
    window: int,
    buffer: int | None = None,
) -> AsyncGenerator[tuple[int, T], None]:
    """Yield `(page, await fetch(page))` in page order.

    The first failure is raised at its place in the order; pending fetches are cancelled when
    the generator is closed or fails.
    """
    window = max(1, window)
    ahead = window if buffer is None else max(0, buffer)
    it = iter(pages)
    exhausted = False
    tasks: dict[int, asyncio.Future[T]] = {}
    order: deque[int] = deque()
    running = 0

    def finished(_: asyncio.Future[T]) -> None:
        nonlocal running
        running -= 1
        top_up()

    def top_up() -> None:
        nonlocal exhausted, running
        while not exhausted and running < window and len(tasks) < window + ahead:
            try:
                page = next(it)
            except StopIteration:
                exhausted = True
                return
            task = asyncio.ensure_future(fetch(page))
            running += 1
            task.add_done_callback(finished)
            tasks[page] = task
            order.append(page)

    try:
        top_up()
        while order:
            page = order.popleft()
            task = tasks[page]
            try:
                result = await task
            finally:
                del tasks[page]
            top_up()
            yield page, result
    finally:
        exhausted = True  # no new fetches from callbacks once we are closing
        pending = [t for t in tasks.values() if not t.done()]
        for t in pending:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)
