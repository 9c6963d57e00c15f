"""`sync_runs` (one row per run, the history `daemon status` reads) and `sync_state`.

A run is inserted as `running` before its first page so a crash leaves evidence, together with
its `owner` (host, pid and the process's start time). `mark_stale_runs_failed` turns the rows
of owners that are gone into `failed / interrupted`, so every command that writes (the service
and `run-once` alike) can call it at start without touching a run another live process is doing.
"""

from __future__ import annotations

import enum
import os
import socket
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import aiosqlite

from daemon.errors import JobBusy, StoreError
from daemon.store.db import Database, execute, query
from daemon.store.util import from_db, from_db_req, to_db

RUN_STATUSES = ("running", "ok", "failed", "cancelled")


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""Marks an argument as "leave this column alone" where None would mean "clear it"."""


@dataclass(frozen=True)
class RunRow:
    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    pages: int
    fetched: int
    inserted: int
    updated: int
    unchanged: int
    deleted: int
    error: str | None
    incomplete: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish; None while running."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class SyncState:
    job: str
    cursor: str | None
    last_success_at: datetime | None
    last_run_at: datetime | None


_RUN_COLS = (
    "id, job, started_at, finished_at, status, pages, fetched, inserted, updated, "
    "unchanged, deleted, error, incomplete"
)


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown; with the
    pid it names a process uniquely, so a recycled pid is not mistaken for a live run."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


@cache
def process_owner() -> str:
    """`host:pid:start` of this process, as stored in `sync_runs.owner`."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that wrote `owner` still runs. Unknown hosts count as alive (we
    cannot look), an absent owner (rows from before migration 2) as gone."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, OverflowError):
        return False
    except PermissionError:
        pass  # it exists, under another user
    return not start or _start_ticks(pid) in ("", start)


def _cut_short(run: RunRow) -> bool:
    return run.status == "cancelled" or (run.status == "failed" and run.error == "interrupted")


def _run(row: sqlite3.Row) -> RunRow:
    return RunRow(
        id=row["id"],
        job=row["job"],
        started_at=from_db_req(row["started_at"]),
        finished_at=from_db(row["finished_at"]),
        status=row["status"],
        pages=row["pages"],
        fetched=row["fetched"],
        inserted=row["inserted"],
        updated=row["updated"],
        unchanged=row["unchanged"],
        deleted=row["deleted"],
        error=row["error"],
        incomplete=row["incomplete"],
    )


class RunsRepo(Database):
    async def start_run(self, job: str, *, max_duration: float | None = None) -> int:
        """Record the start of a run of `job`, or raise `JobBusy` while another live process
        runs it. Checked and inserted in one write transaction, so two processes cannot both
        start. A `running` row older than `max_duration` (plus a minute) is not taken for a
        run in progress whoever wrote it: every run ends by then, and the owner may be on
        another host, where it cannot be asked."""
        me = process_owner()
        now = self.clock.now()

        async def fn(conn: aiosqlite.Connection) -> int:
            for run_id, owner, started in await query(
                conn,
                "SELECT id, owner, started_at FROM sync_runs WHERE job = ? AND status = 'running'",
                (job,),
            ):
                if owner == me or not owner_alive(owner):
                    continue
                age = (now - from_db_req(started)).total_seconds()
                if max_duration is not None and age > max_duration + 60:
                    continue
                raise JobBusy(
                    f"job {job!r} is running in another process ({owner}, run {run_id}); "
                    "a job never runs twice at once"
                )
            async with conn.execute(
                "INSERT INTO sync_runs (job, started_at, status, owner) "
                "VALUES (?, ?, 'running', ?)",
                (job, to_db(now), me),
            ) as cur:
                assert cur.lastrowid is not None
                return int(cur.lastrowid)

        return await self.write(fn)

    async def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        pages: int = 0,
        fetched: int = 0,
        inserted: int = 0,
        updated: int = 0,
        unchanged: int = 0,
        deleted: int = 0,
        error: str | None = None,
        incomplete: str | None = None,
    ) -> None:
        if status not in ("ok", "failed", "cancelled"):
            raise StoreError(f"finish_run: status must be ok, failed or cancelled, not {status!r}")
        params = (
            status, pages, fetched, inserted, updated, unchanged, deleted, error, incomplete,
            run_id,
        )  # fmt: skip

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "UPDATE sync_runs SET finished_at = ?, status = ?, pages = ?, fetched = ?, "
                "inserted = ?, updated = ?, unchanged = ?, deleted = ?, error = ?, "
                "incomplete = ? WHERE id = ?",
                (to_db(self.clock.now()), *params),
            )

        await self.write(fn)

    async def update_run_progress(
        self,
        run_id: int,
        *,
        pages: int,
        fetched: int,
        inserted: int,
        updated: int,
        unchanged: int,
        deleted: int = 0,
    ) -> None:
        """Optional: lets `daemon status` show a long run's counters while it is going."""

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "UPDATE sync_runs SET pages = ?, fetched = ?, inserted = ?, updated = ?, "
                "unchanged = ?, deleted = ? WHERE id = ? AND status = 'running'",
                (pages, fetched, inserted, updated, unchanged, deleted, run_id),
            )

        await self.write(fn)

    async def mark_stale_runs_failed(self) -> int:
        """Runs left `running` by a process that is gone (a crash, a kill) become
        `failed / interrupted`; runs a live process (the service beside a `run-once`) is doing
        are left alone. Returns how many were marked."""

        async def fn(conn: aiosqlite.Connection) -> int:
            rows = await query(conn, "SELECT id, owner FROM sync_runs WHERE status = 'running'")
            stale = [int(r[0]) for r in rows if not owner_alive(r[1])]
            for run_id in stale:
                await execute(
                    conn,
                    "UPDATE sync_runs SET status = 'failed', error = 'interrupted', "
                    "finished_at = ? WHERE id = ? AND status = 'running'",
                    (to_db(self.clock.now()), run_id),
                )
            return len(stale)

        return await self.write(fn)

    async def get_run(self, run_id: int) -> RunRow | None:
        row = await self.fetchone(f"SELECT {_RUN_COLS} FROM sync_runs WHERE id = ?", (run_id,))
        return None if row is None else _run(row)

    async def last_runs(self, *, finished_only: bool = False) -> list[RunRow]:
        """The latest run of each job (ordered by job); `finished_only` skips running ones."""
        where = "WHERE status != 'running'" if finished_only else ""
        rows = await self.fetchall(
            f"SELECT {_RUN_COLS} FROM sync_runs WHERE id IN "
            f"(SELECT MAX(id) FROM sync_runs {where} GROUP BY job) ORDER BY job"
        )
        return [_run(r) for r in rows]

    async def schedule_seeds(self) -> dict[str, datetime | None]:
        """Each job's last start, as its schedule counts from it (`first_due`) — None for a run
        a stop or a crash cut short (`cancelled`; `failed` as `interrupted`): that job runs at
        the start instead. Counted from, a daily job cut short by a deploy waited a day
        (found by probing)."""
        return {r.job: None if _cut_short(r) else r.started_at for r in await self.last_runs()}

    async def list_runs(self, job: str | None = None, *, limit: int = 50) -> list[RunRow]:
        """Newest first."""
        where, params = ("WHERE job = ?", [job]) if job is not None else ("", [])
        rows = await self.fetchall(
            f"SELECT {_RUN_COLS} FROM sync_runs {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [_run(r) for r in rows]

    async def get_sync_state(self, job: str) -> SyncState | None:
        row = await self.fetchone(
            "SELECT job, cursor, last_success_at, last_run_at FROM sync_state WHERE job = ?",
            (job,),
        )
        if row is None:
            return None
        return SyncState(
            job=row["job"],
            cursor=row["cursor"],
            last_success_at=from_db(row["last_success_at"]),
            last_run_at=from_db(row["last_run_at"]),
        )

    async def set_sync_state(
        self,
        job: str,
        *,
        cursor: str | _Unset | None = UNSET,
        last_success_at: datetime | _Unset | None = UNSET,
    ) -> None:
        """Update only the fields given (None clears); `last_run_at` is always set to now."""
        sets = ["last_run_at = excluded.last_run_at"]
        if cursor is not UNSET:
            sets.append("cursor = excluded.cursor")
        if last_success_at is not UNSET:
            sets.append("last_success_at = excluded.last_success_at")
        cursor_v = None if isinstance(cursor, _Unset) else cursor
        success_v = (
            None
            if isinstance(last_success_at, _Unset) or last_success_at is None
            else to_db(last_success_at)
        )

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO sync_state (job, cursor, last_success_at, last_run_at) "
                f"VALUES (?, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET {', '.join(sets)}",
                (job, cursor_v, success_v, to_db(self.clock.now())),
            )

        await self.write(fn)
