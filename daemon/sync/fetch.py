"""What a sync job fetches: the `Fetcher` protocol every upstream strategy implements.

A fetcher yields `Page`s — at most one upstream page of records each — so the runner writes one
transaction per page and memory holds a page, never the whole upstream set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.clients.paging import WalkReport


@dataclass
class Page:
    """One page of `(id, record)` pairs.

    `period` tags report rows (one period per month); `cursor` is the high-water mark after this
    page for incremental jobs, stored only once the page is committed.
    """

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    period: str | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class Completeness:
    """A fetcher's verdict, once its pages are exhausted: may the runner tombstone?

    `expected` is the number of distinct records the upstream says the list holds (its total),
    when it said; the runner checks it against the distinct ids it stored before it trusts the
    walk. `reason` says why a walk is not complete.
    """

    complete: bool
    reason: str | None = None
    expected: int | None = None
    # A report job's months read in this run: only their rows may be tombstoned (a month the
    # job did not ask about again says nothing about its rows). None: the whole table.
    periods: tuple[str, ...] | None = None

    @classmethod
    def of(cls, report: WalkReport) -> Completeness:
        if not report.complete:
            return cls(False, report.incomplete or "the walk did not finish")
        return cls(True, expected=report.total_start)

    @classmethod
    def of_all(cls, reports: Iterable[WalkReport]) -> Completeness:
        """Several walks into one table: complete when each is; totals add up only when every
        walk had one."""
        expected: int | None = 0
        for report in reports:
            verdict = cls.of(report)
            if not verdict.complete:
                return verdict
            expected = (
                None
                if expected is None or verdict.expected is None
                else (expected + verdict.expected)
            )
        return cls(True, expected=expected)


class Fetcher(Protocol):
    """Streams a job's records from its upstream."""

    def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        """Pages in order; `cursor` is the stored high-water mark (incremental mode) or None."""
        ...

    def completeness(self) -> Completeness:
        """Called after `pages` is exhausted without error."""
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
