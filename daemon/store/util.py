"""Small pure helpers shared by the store modules: timestamps, identifiers, canonical JSON.

Timestamps are stored as fixed-width ISO-8601 UTC text with microseconds and a `Z` suffix
(`2025-01-02T03:04:05.123456Z`). Fixed width matters: SQLite compares them as strings, so
`seen_at < ?` and `ORDER BY received_at` are only correct when every value has the same shape.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from daemon.canonical import canonical_json_hash
from daemon.errors import StoreError, UnstorableRecord, shorten
from daemon.isotime import db_text
from daemon.tablenames import table_name_problem

T = TypeVar("T")

# SQLite's default limit on host parameters was 999 before 3.32; staying below it keeps the
# store portable to whatever libsqlite3 the host Python links against.
MAX_VARIABLES = 900


def validate_table_name(name: str) -> str:
    """Refuse anything but a plain lower-case identifier before it can reach SQL text.

    The rule itself lives in `daemon.tablenames`, which the config applies at load too, so a
    name `check-config` accepts is a name the store accepts.
    """
    problem = table_name_problem(name)
    if problem is not None:
        raise StoreError(problem)
    return name


def quote_ident(name: str) -> str:
    """Quote a validated identifier; belt and braces on top of `validate_table_name`."""
    return '"' + validate_table_name(name).replace('"', '""') + '"'


def to_db(when: datetime) -> str:
    """Aware datetime -> the store's fixed-width UTC text."""
    if when.tzinfo is UTC:  # the usual case (our clocks): no conversion
        return db_text(when)
    if when.tzinfo is None:
        raise StoreError("naive datetime given to the store; times must be aware UTC")
    return db_text(when.astimezone(UTC))


def from_db(text: str | None) -> datetime | None:
    """Stored text -> aware UTC datetime (tolerates `+00:00` written by hand)."""
    if text is None:
        return None
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def from_db_req(text: str) -> datetime:
    """`from_db` for NOT NULL columns, so callers get a plain datetime type."""
    parsed = from_db(text)
    assert parsed is not None
    return parsed


def record_hash(data: Mapping[str, Any]) -> str:
    return encode_record(data)[1]


def encode_record(data: Mapping[str, Any], record_id: str = "?") -> tuple[str, str]:
    """`(text, hash)`: the stored text *is* the canonical form the hash is over (same values,
    keys sorted), so a record is encoded once per page write, not twice.

    A lone surrogate is stored as U+FFFD (`daemon.canonical`); a record JSON cannot hold at all
    (NaN, Infinity, nesting deeper than Python's recursion limit) is refused naming its id.
    """
    try:
        return canonical_json_hash(data)
    except ValueError as exc:
        raise UnstorableRecord(
            f"record {_shown(record_id)} holds a value JSON cannot store ({exc}): NaN or Infinity"
        ) from None
    except RecursionError:
        raise UnstorableRecord(
            f"record {_shown(record_id)} is nested too deeply to store"
        ) from None


def _shown(record_id: object, limit: int = 80) -> str:
    """An upstream's id for a message: whatever it sent, at most `limit` characters of it."""
    return shorten(repr(record_id), limit)


def chunked(items: Sequence[T], size: int = MAX_VARIABLES) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def rows_where_in(
    raw: sqlite3.Connection, table: str, column: str, values: Sequence[Any], columns: str
) -> list[list[Any]]:
    """`columns` of the rows of `table` (our own names, quoted if need be) whose `column` is one
    of `values`: bound as parameters, read back as one JSON row per chunk, so one step each
    (`value_rows` says why few steps matter). Not through `json_each(?)`, which ends a text at
    its first NUL: a key holding one would not be found (`json_array` keeps it)."""
    found: list[list[Any]] = []
    for chunk in chunked(values):
        ((text,),) = raw.execute(
            f"SELECT json_group_array(json_array({columns})) FROM {table} "
            f"WHERE {column} IN ({placeholders(len(chunk))})",
            chunk,
        ).fetchall()
        found += json.loads(text)
    return found


def value_rows(rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """`rows` (all of one width) as multi-row VALUES: `(marks, params)` for each statement,
    the most rows one statement can bind.

    Why not `executemany`: it steps the statement once per row, and Python's sqlite3 gives the
    GIL up around every step; on a writer thread that has to win it back from a busy event loop,
    each row can wait for the loop's switch interval (5 ms). A 1,000-row page took seconds that
    way beside a busy thread, and tens of milliseconds as seven statements."""
    if not rows:
        return
    width = len(rows[0])
    for chunk in chunked(rows, max(1, MAX_VARIABLES // width)):
        yield value_marks(width, len(chunk)), [v for row in chunk for v in row]


@functools.cache
def value_marks(width: int, rows: int) -> str:
    """`(?,?),(?,?)` for `rows` rows of `width` values: a multi-row VALUES' placeholders."""
    return ",".join([f"({placeholders(width)})"] * rows)
