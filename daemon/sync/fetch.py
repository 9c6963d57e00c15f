"""What a sync job fetches: the `Fetcher` protocol every upstream strategy implements.

A fetcher yields `Page`s — at most one upstream page of records each — so the runner writes one
transaction per page and memory holds a page, never the whole upstream set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Page:
    """One page of `(id, record)` pairs.

    `period` tags report rows (one period per month); `cursor` is the high-water mark after this
    page for incremental jobs, stored only once the page is committed.
    """

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    period: str | None = None
    cursor: str | None = None


class Fetcher(Protocol):
    """Streams a job's records from its upstream."""

    def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        """Pages in order; `cursor` is the stored high-water mark (incremental mode) or None."""
        ...


def max_cursor(
    current: str | None, records: list[tuple[str, dict[str, Any]]], cursor_field: str
) -> str | None:
    """The larger of `current` and the records' `cursor_field` values (compared as text, which
    orders the ISO-style timestamps and zero-padded ids upstreams use)."""
    best = current
    for _, rec in records:
        value = rec.get(cursor_field)
        if value is None or value == "":
            continue
        text = str(value)
        if best is None or text > best:
            best = text
    return best
