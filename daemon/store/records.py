"""Record tables: one per sync job, upserted a page per transaction, tombstoned after full runs.

Change detection is by hash of the canonical JSON (sorted keys, compact, UTF-8): a record the
upstream sends again unchanged is not rewritten, only its `seen_at` is bumped, so a 100k-row
resync costs reads plus one small UPDATE per page instead of rewriting the table.

`seen_at >= run_started_at` is how a full run proves it saw a row; `mark_tombstones` relies on
it, and the caller only calls it after a *complete* full run, so a failed run deletes nothing.
`seen_at` is written as max(now, run_started_at) so that a wall clock stepping backwards during
a run cannot make a freshly seen row look stale.

A row is tombstoned only when two consecutive complete runs missed it: the first marks it
(`missed_at`), the second deletes it, and any run that sees it again clears the mark. Offset
paging shifts rows between pages while records are deleted upstream, so one complete-looking
walk can miss a live row; it cannot miss the same live row twice in a row unless the deletions
go on. And a run that would remove more than `max_fraction` of the live rows removes none.

Report tables carry `period`; their `id` is built by the caller and must already include the
period (e.g. `2025-01:pkg-7`), since the primary key is `id` alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from daemon.canonical import repair_surrogates
from daemon.errors import StoreError
from daemon.store.db import Database, execute, query
from daemon.store.util import (
    chunked,
    encode_record,
    placeholders,
    quote_ident,
    rows_where_in,
    to_db,
    validate_table_name,
    value_rows,
)


@dataclass(frozen=True)
class TombstoneResult:
    """What a complete full run's tombstone pass did (or refused to do)."""

    deleted: int = 0  # missed by this and the previous complete run: tombstoned now
    marked: int = 0  # missed for the first time: tombstoned if the next complete run agrees
    missing: int = 0  # live rows this run did not see (deleted + marked)
    live: int = 0  # live rows before the pass
    refused: bool = False  # `missing` was more than `max_fraction` of `live`: nothing changed


@dataclass(frozen=True)
class UpsertResult:
    """What one page did to its table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def _record_ddl(table: str, report: bool) -> list[str]:
    q = quote_ident(table)
    period = "    period        TEXT,\n" if report else ""
    ddl = [
        f"""CREATE TABLE IF NOT EXISTS {q} (
    id            TEXT PRIMARY KEY,
    data          TEXT NOT NULL,
    hash          TEXT,
{period}    first_seen_at TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    seen_at       TEXT NOT NULL,
    deleted_at    TEXT,
    missed_at     TEXT
)"""
    ]
    if report:
        ddl.append(f'CREATE INDEX IF NOT EXISTS "{table}_period" ON {q} (period)')
    return ddl


# `iter_records`: the JSON text one batch may carry (a record larger than this comes alone).
BATCH_CHARS = 8 * 1024 * 1024


@dataclass(frozen=True)
class _PageWrite:
    """One page's rows, encoded in the caller's task, for `_upsert_pages` on the writer."""

    table: str  # quoted
    is_report: bool
    prepared: dict[str, tuple[str, str]]  # id -> (canonical JSON, hash), in page order
    now: str
    seen: str  # max(now, the run's start): see the module docstring
    period: str | None
    insert_only: bool


def _upsert_pages(raw: sqlite3.Connection, pages: Sequence[_PageWrite]) -> list[UpsertResult]:
    """The writer's half of `upsert_page`, for each page queued together: on the writer
    connection's own thread, so a page is one hand-off (BEGIN, look-up, writes, COMMIT)
    rather than one per statement, each of which had to win the GIL back from a busy loop."""
    return [_upsert(raw, page) for page in pages]


def _upsert(raw: sqlite3.Connection, page: _PageWrite) -> UpsertResult:
    q, now, seen, period = page.table, page.now, page.seen, page.period
    ids = list(page.prepared)
    existing: dict[str, tuple[str | None, str | None]] = {
        rid: (h, d) for rid, h, d in rows_where_in(raw, q, "id", ids, "id, hash, deleted_at")
    }
    inserts: list[tuple[Any, ...]] = []
    changed: list[tuple[Any, ...]] = []
    revived: list[str] = []  # tombstoned append-only rows that came back: kept as is
    unchanged: list[str] = []
    for rid, (text, digest) in page.prepared.items():
        if rid not in existing:
            row: tuple[Any, ...] = (rid, text, digest, now, now, seen)
            inserts.append((*row, period) if page.is_report else row)
            continue
        old_hash, deleted_at = existing[rid]
        if deleted_at is None and (page.insert_only or old_hash == digest):
            unchanged.append(rid)
        elif page.insert_only:
            revived.append(rid)
        else:
            fields = (rid, text, digest, now, seen)
            changed.append((*fields, period) if page.is_report else fields)
    cols = "id, data, hash, first_seen_at, updated_at, seen_at"
    cols += ", period" if page.is_report else ""
    for marks, params in value_rows(inserts):
        raw.execute(f"INSERT INTO {q} ({cols}) VALUES {marks}", params)
    set_period = ", period = v.column6" if page.is_report else ""
    for marks, params in value_rows(changed):
        raw.execute(
            f"UPDATE {q} SET data = v.column2, hash = v.column3, updated_at = v.column4, "
            f"seen_at = v.column5, deleted_at = NULL, missed_at = NULL{set_period} "
            f"FROM (VALUES {marks}) AS v WHERE {q}.id = v.column1",
            params,
        )
    for chunk in chunked(revived):
        raw.execute(
            f"UPDATE {q} SET deleted_at = NULL, missed_at = NULL, updated_at = ?, "
            f"seen_at = ? WHERE id IN ({placeholders(len(chunk))})",
            (now, seen, *chunk),
        )
    for chunk in chunked(unchanged):
        raw.execute(
            f"UPDATE {q} SET seen_at = ?, missed_at = NULL "
            f"WHERE id IN ({placeholders(len(chunk))})",
            (seen, *chunk),
        )
    return UpsertResult(len(inserts), len(changed) + len(revived), len(unchanged))


class RecordsRepo(Database):
    async def ensure_record_table(self, table: str, *, report: bool = False) -> None:
        """Create the job's table if missing; a job switching to/from report is refused."""
        validate_table_name(table)

        async def job(conn: aiosqlite.Connection) -> bool:
            for sql in _record_ddl(table, report):
                await execute(conn, sql)
            cols = await query(conn, f"PRAGMA table_info({quote_ident(table)})")
            if not any(c[1] == "missed_at" for c in cols):  # a table from before the column
                await execute(conn, f"ALTER TABLE {quote_ident(table)} ADD COLUMN missed_at TEXT")
            return any(c[1] == "period" for c in cols)

        has_period = await self.write(job)
        if has_period != report:
            raise StoreError(
                f"record table {table!r} exists {'with' if has_period else 'without'} a period "
                "column; a job cannot switch between report and plain records in place"
            )
        self._record_tables[table] = has_period

    async def _table_kind(self, table: str) -> bool:
        """Whether `table` is a report table; it must exist (ensure_record_table first)."""
        validate_table_name(table)
        if table in self._record_tables:
            return self._record_tables[table]
        cols = await self.fetchall(f"PRAGMA table_info({quote_ident(table)})")
        if not cols:
            raise StoreError(f"record table {table!r} does not exist")
        is_report = any(c["name"] == "period" for c in cols)
        self._record_tables[table] = is_report
        return is_report

    async def upsert_page(
        self,
        table: str,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        run_started_at: datetime,
        period: str | None = None,
        insert_only: bool = False,
    ) -> UpsertResult:
        """Write one page in one transaction, which group commit may share with other writes
        queued at the same moment; should the page fail, it is tried again alone, so its error
        is its own and the others' rows are kept.

        `insert_only` (append-mode jobs, whose upstream rows never change) keeps existing rows
        as they are and counts them unchanged. A later duplicate id in the same page wins.
        """
        is_report = await self._table_kind(table)
        if period is not None and not is_report:
            raise StoreError(f"record table {table!r} has no period column")
        # Serialise and hash here, in the caller's task, to keep the writer's turn short.
        prepared: dict[str, tuple[str, str]] = {}
        for rid, data in records:
            # An id holding a lone surrogate (`"\ud800"` in the upstream's JSON) cannot be bound
            # (sqlite3 encodes every text to UTF-8): it is kept with U+FFFD, as record data is.
            key = repair_surrogates(str(rid))
            prepared[key] = encode_record(data, key)
        if not prepared:
            return UpsertResult()
        now = to_db(self.clock.now())
        page = _PageWrite(
            table=quote_ident(table),
            is_report=is_report,
            prepared=prepared,
            now=now,
            seen=max(now, to_db(run_started_at)),
            period=period,
            insert_only=insert_only,
        )
        return await self.write_batched(_upsert_pages, page)

    async def mark_tombstones(
        self,
        table: str,
        *,
        run_started_at: datetime,
        period: str | None = None,
        max_fraction: float = 1.0,
    ) -> TombstoneResult:
        """The tombstone pass of a COMPLETE full run (see the module docstring), in one
        transaction: rows this run did not see are marked, rows already marked by the previous
        complete run are tombstoned — unless more than `max_fraction` of the live rows are
        missing, in which case nothing changes and `refused` is set.

        With `period`, only that report period is considered.
        """
        is_report = await self._table_kind(table)
        if period is not None and not is_report:
            raise StoreError(f"record table {table!r} has no period column")
        q = quote_ident(table)
        scope, scope_params = ("AND period = ?", [period]) if period is not None else ("", [])
        started = to_db(run_started_at)

        async def job(conn: aiosqlite.Connection) -> TombstoneResult:
            now = to_db(self.clock.now())
            ((live, missing),) = await query(
                conn,
                f"SELECT COUNT(*), COALESCE(SUM(seen_at < ?), 0) "
                f"FROM {q} WHERE deleted_at IS NULL {scope}",
                [started, *scope_params],
            )
            if live and missing > max_fraction * live:
                return TombstoneResult(missing=missing, live=live, refused=True)
            if not missing:  # the usual run: both updates below would scan the table for nothing
                return TombstoneResult(missing=0, live=live)
            deleted = await execute(
                conn,
                f"UPDATE {q} SET deleted_at = ?, missed_at = NULL WHERE deleted_at IS NULL "
                f"AND seen_at < ? AND missed_at IS NOT NULL {scope}",
                [now, started, *scope_params],
            )
            marked = await execute(
                conn,
                f"UPDATE {q} SET missed_at = ? WHERE deleted_at IS NULL AND seen_at < ? "
                f"AND missed_at IS NULL {scope}",
                [started, started, *scope_params],
            )
            return TombstoneResult(deleted, marked, missing, live)

        return await self.write(job)

    async def count_seen(self, table: str, *, run_started_at: datetime) -> int:
        """Distinct live ids the run that started at `run_started_at` has written or seen: the
        runner compares it with the upstream's total before it trusts a walk."""
        await self._table_kind(table)
        row = await self.fetchone(
            f"SELECT COUNT(*) AS n FROM {quote_ident(table)} "
            "WHERE seen_at >= ? AND deleted_at IS NULL",
            (to_db(run_started_at),),
        )
        return int(row["n"]) if row is not None else 0

    async def iter_records(
        self, table: str, *, include_deleted: bool = False, batch: int = 1000
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Stream `(id, data)` in id order, a batch per query, so memory stays flat: at most
        `batch` records and, past the first, `BATCH_CHARS` of their JSON.

        A batch is read as one JSON row, not a row per record: each row SQLite returns is a
        step, and each step gives the GIL up and has to win it back from the event loop (see
        `value_rows`); a 1,000-row batch beside a busy thread took 0.5 s that way and 10 ms as
        one row. The ids and sizes come first (one small row), so a batch of large records is
        cut short instead of growing one string towards SQLite's 1 GB limit. The order inside
        an aggregate is not promised before SQLite 3.44, so each is sorted here (UTF-8 byte
        order, which SQLite compares, is code point order).
        """
        await self._table_kind(table)
        q = quote_ident(table)
        live = "" if include_deleted else " AND deleted_at IS NULL"
        sizes_sql = (
            "SELECT json_group_array(json_array(id, length(data))) FROM "
            f"(SELECT id, data FROM {q} WHERE id > ?{live} ORDER BY id LIMIT ?)"
        )
        rows_sql = (
            "SELECT json_group_array(json_array(id, json(data))) FROM "
            f"(SELECT id, data FROM {q} WHERE id > ? AND id <= ?{live})"
        )
        last = ""
        while True:
            found = await self.fetchone(sizes_sql, (last, batch))
            sizes: list[list[Any]] = sorted(json.loads(found[0])) if found is not None else []
            if not sizes:
                return
            upto, total = sizes[0][0], 0
            for record_id, size in sizes:
                if total and total + size > BATCH_CHARS:
                    break
                upto, total = record_id, total + size
            found = await self.fetchone(rows_sql, (last, upto))
            pairs: list[list[Any]] = json.loads(found[0]) if found is not None else []
            pairs.sort(key=lambda pair: pair[0])
            for record_id, data in pairs:
                yield record_id, data
            if upto == sizes[-1][0] and len(sizes) < batch:
                return
            last = upto

    async def get_record(self, table: str, record_id: str) -> dict[str, Any] | None:
        """The live record's data, or None when unknown or tombstoned."""
        await self._table_kind(table)
        row = await self.fetchone(
            f"SELECT data FROM {quote_ident(table)} WHERE id = ? AND deleted_at IS NULL",
            (repair_surrogates(record_id),),
        )
        return None if row is None else dict(json.loads(row["data"]))

    async def record_tables(self) -> list[str]:
        """Names of the record tables present (anything with the record-table shape)."""
        rows = await self.fetchall(
            "SELECT m.name FROM sqlite_master AS m WHERE m.type = 'table' "
            "AND m.name NOT LIKE 'sqlite_%' AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) "
            "WHERE name = 'seen_at') ORDER BY m.name"
        )
        return [r["name"] for r in rows]
