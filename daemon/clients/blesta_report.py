"""Blesta reports: `report_manager/fetchAll` streams a CSV file, not a JSON envelope.

The sync job "blesta-revenue" stores one run per month, so `report_series` walks months and tags
each row with `_period`; the store keeps that as the report table's `period` column.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from daemon.errors import MalformedResponse

if TYPE_CHECKING:
    from daemon.clients.blesta import BlestaClient


def parse_period(text: str) -> tuple[int, int]:
    """'YYYY-MM' → (year, month); a clear ValueError otherwise."""
    try:
        year_s, month_s = text.strip().split("-")
        year, month = int(year_s), int(month_s)
    except ValueError:
        raise ValueError(f"period {text!r} is not YYYY-MM") from None
    if not 1 <= month <= 12 or year < 1970:
        raise ValueError(f"period {text!r} is not YYYY-MM")
    return year, month


def month_bounds(year: int, month: int) -> tuple[date, date]:
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def months(start: str, end: str) -> Iterator[str]:
    """Every 'YYYY-MM' from `start` to `end` inclusive (nothing if end < start)."""
    year, month = parse_period(start)
    end_y, end_m = parse_period(end)
    while (year, month) <= (end_y, end_m):
        yield f"{year:04d}-{month:02d}"
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


async def get_report(
    client: BlestaClient,
    report_type: str,
    start_date: date | str,
    end_date: date | str,
    fmt: str = "csv",
) -> list[dict[str, Any]]:
    """GET `report_manager/fetchAll.json?type=..&vars[start_date]=..&vars[end_date]=..&format=..`.

    The `.json` in the path only selects the API's error format; a successful answer is the
    report file itself. CSV becomes a list of dicts keyed by the header's display names.
    """
    resp = await client.get(
        "report_manager",
        "fetchAll",
        {
            "type": report_type,
            "vars": {"start_date": str(start_date), "end_date": str(end_date)},
            "format": fmt,
        },
    )
    if resp.csv_data is not None:
        return resp.csv_data
    if isinstance(resp.data, list) and all(isinstance(r, dict) for r in resp.data):
        return list(resp.data)
    raise MalformedResponse(
        f"report {report_type!r} answered neither CSV nor a list of rows",
        upstream=client.name,
        status=resp.status,
    )


async def report_series(
    client: BlestaClient, report_type: str, start: str, end: str | None = None
) -> AsyncGenerator[tuple[str, list[dict[str, Any]]], None]:
    """Yield `(period, rows)` per month, each row carrying `_period`.

    `end` None or 'current' means the clock's current month. Months run one after the other so
    a failure names the month it happened in and earlier months are already stored.
    """
    if end is None or end == "current":
        now = client.session.clock.now()
        end = f"{now.year:04d}-{now.month:02d}"
    for period in months(start, end):
        first, last = month_bounds(*parse_period(period))
        rows = await get_report(client, report_type, first.isoformat(), last.isoformat())
        yield period, [{**row, "_period": period} for row in rows]


def to_dataframe(rows: list[dict[str, Any]]) -> Any:
    """Rows as a pandas DataFrame, for notebooks; pandas is an optional extra."""
    try:
        import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise RuntimeError(
            "to_dataframe needs pandas: pip install 'integration-daemon[pandas]'"
        ) from None
    return pd.DataFrame(rows)
