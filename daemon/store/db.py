"""Connections, the single writer task, transactions and group commit.

Why one writer: SQLite allows one writer at a time anyway; funnelling every write through one
task and one connection turns lock contention (and `database is locked` after busy_timeout)
into an ordered queue with back-pressure, and lets the writer batch work: jobs marked
`groupable` that are queued together share one transaction and therefore one fsync (the
webhook inbox answers 2xx only after its events are durable, so concurrent deliveries would
otherwise pay one commit each). Each job in a group runs under its own SAVEPOINT, so one
failing job is rolled back alone and the others still commit; every caller gets its own result
or exception through its future.

Reads use a separate connection: in WAL mode it sees the last committed state and never
blocks the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite
import structlog

from daemon.clock import Clock
from daemon.errors import StoreError
from daemon.store.schema import SCHEMA_VERSION, migrate, user_version
from daemon.store.util import to_db

log = structlog.get_logger(__name__)

T = TypeVar("T")
WriteFn = Callable[[aiosqlite.Connection], Awaitable[T]]

QUEUE_SIZE = 1000
MAX_GROUP = 256
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = NORMAL",
)
# A read-only connection cannot switch the journal mode; the writer already did.
READ_ONLY_PRAGMAS = ("PRAGMA busy_timeout = 5000", "PRAGMA foreign_keys = ON")


@dataclass
class StoreStats:
    """Counters for tests and /metrics: how well group commit is working."""

    commits: int = 0
    rollbacks: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    largest_group: int = 0


@dataclass
class _Job:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    future: asyncio.Future[Any]
    groupable: bool = False
    transactional: bool = True


_STOP = object()


async def _shielded(aw: Awaitable[T]) -> T:
    """Finish `aw` even if we are cancelled meanwhile, then let the cancellation through.

    A COMMIT or ROLLBACK that is abandoned half-way would leave the connection in a state we
    cannot reason about; waiting for it is cheap and bounded by busy_timeout.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


@asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """`BEGIN IMMEDIATE` … `COMMIT` with a shielded commit and a rollback on any error.

    IMMEDIATE takes the write lock up front, so a second process (say `run-once` beside the
    service) waits on busy_timeout at BEGIN instead of failing at its first write.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        await _shielded(conn.execute("ROLLBACK"))
        raise
    await _shielded(conn.execute("COMMIT"))


async def _connect(target: str, *, uri: bool = False) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(target, isolation_level=None, uri=uri)
    try:
        for pragma in PRAGMAS if not uri else READ_ONLY_PRAGMAS:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


class Database:
    """The connection-owning core of `Store`; repositories add their methods on top."""

    def __init__(self, path: Path, *, clock: Clock, read_only: bool = False) -> None:
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self.stats = StoreStats()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Job | object] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._record_tables: dict[str, bool] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def connect(cls, path: Path, *, clock: Clock, read_only: bool = False) -> Self:
        """Open (creating and migrating unless `read_only`) and start the writer task.

        `read_only` is for inspection commands (`daemon status`): it never creates the file,
        never migrates and refuses writes, so it is safe beside a running service.
        """
        store = cls(path, clock=clock, read_only=read_only)
        try:
            await store._open()
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, clock: Clock, read_only: bool = False
    ) -> AsyncIterator[Self]:
        store = await cls.connect(path, clock=clock, read_only=read_only)
        try:
            yield store
        finally:
            await store.close()

    async def _open(self) -> None:
        try:
            if self.read_only:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: database does not exist")
                self._reader = await _connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
                self._reader.row_factory = sqlite3.Row
                version = await user_version(self._reader)
                if version != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: schema version {version}, this daemon expects "
                        f"{SCHEMA_VERSION}; start the service (or run-once) to migrate it"
                    )
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await _connect(str(self.path))
            await migrate(self._writer, str(self.path))
            self._reader = await _connect(str(self.path))
            await self._reader.execute("PRAGMA query_only = ON")
            self._reader.row_factory = sqlite3.Row
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from exc
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Let queued writes finish, then close both connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            if not self._task.done():
                await self._queue.put(_STOP)
            try:
                await _shielded(self._task)
            finally:
                self._task = None
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    # -- writes ------------------------------------------------------------------------------

    async def write(
        self, fn: WriteFn[T], *, groupable: bool = False, transactional: bool = True
    ) -> T:
        """Run `fn(conn)` on the writer connection inside a transaction and return its result.

        Once queued, the job runs even if the caller is cancelled (the wait is shielded): a
        write either happens or reports an error, it is never silently half-done.
        """
        if self._closed or self._task is None:
            raise StoreError("store is closed" if not self.read_only else "store is read-only")
        if self._task.done():
            raise StoreError("store writer has stopped; reopen the store")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(fn, future, groupable, transactional))
        try:
            return await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise StoreError(f"database write failed: {exc}") from exc

    async def _write_loop(self) -> None:
        carry: _Job | object | None = None
        pending: list[_Job] = []
        try:
            while True:
                item = carry if carry is not None else await self._queue.get()
                carry = None
                if item is _STOP:
                    return
                assert isinstance(item, _Job)
                pending = [item]
                if item.groupable:
                    while len(pending) < MAX_GROUP:
                        try:
                            nxt = self._queue.get_nowait()
                        except asyncio.QueueEmpty:
                            break
                        if isinstance(nxt, _Job) and nxt.groupable:
                            pending.append(nxt)
                        else:
                            carry = nxt
                            break
                await self._run_group(pending)
                pending = []
        except BaseException as exc:
            # Never leave a caller waiting forever on a writer that is gone.
            failure = StoreError(f"store writer stopped: {exc!r}")
            for job in pending:
                if not job.future.done():
                    job.future.set_exception(failure)
            while not self._queue.empty():
                left = self._queue.get_nowait()
                if isinstance(left, _Job) and not left.future.done():
                    left.future.set_exception(failure)
            if not isinstance(exc, asyncio.CancelledError):
                log.error("store.writer_failed", error=repr(exc))
            raise

    async def _run_group(self, jobs: Sequence[_Job]) -> None:
        conn = self._writer
        assert conn is not None
        self.stats.jobs += len(jobs)
        self.stats.largest_group = max(self.stats.largest_group, len(jobs))
        if not jobs[0].transactional:
            job = jobs[0]
            try:
                result = await job.fn(conn)
            except Exception as exc:
                self.stats.failed_jobs += 1
                _settle(job.future, exc=exc)
            else:
                _settle(job.future, result=result)
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                await conn.execute("SAVEPOINT job")
                try:
                    result = await job.fn(conn)
                except Exception as exc:
                    await conn.execute("ROLLBACK TO job")
                    await conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                    self.stats.failed_jobs += 1
                else:
                    await conn.execute("RELEASE job")
                    outcomes.append((True, result))
            if any(ok for ok, _ in outcomes):
                await _shielded(conn.execute("COMMIT"))
                self.stats.commits += 1
            else:
                await _shielded(conn.execute("ROLLBACK"))
                self.stats.rollbacks += 1
        except Exception as exc:
            # BEGIN or COMMIT failed (locked past busy_timeout, disk full): nothing landed.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    await _shielded(conn.execute("ROLLBACK"))
            self.stats.rollbacks += 1
            for job in jobs:
                _settle(job.future, exc=exc)
            return
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                _settle(job.future, result=value)
            else:
                _settle(job.future, exc=value)

    # -- reads -------------------------------------------------------------------------------

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is closed")
        return self._reader

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Run a query on the read connection; rows support access by column name."""
        conn = self._read_conn()
        try:
            async with conn.execute(sql, tuple(params)) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc
        return list(rows)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def now_text(self) -> str:
        return to_db(self.clock.now())

    # -- maintenance -------------------------------------------------------------------------

    async def checkpoint(self) -> tuple[int, int, int]:
        """Fold the WAL back into the database and truncate it, so the -wal file stays small.

        Returns SQLite's (busy, wal pages, checkpointed pages); busy=1 means a reader held
        the WAL and the truncation will be retried next time.
        """

        async def job(conn: aiosqlite.Connection) -> tuple[int, int, int]:
            async with conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1]), int(row[2])

        return await self.write(job, transactional=False)

    async def optimize(self) -> None:
        """`PRAGMA optimize`: cheap, keeps query plans good as tables grow."""

        async def job(conn: aiosqlite.Connection) -> None:
            await conn.execute("PRAGMA optimize")

        await self.write(job, transactional=False)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def execute(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
    """Run one statement on the writer and return the number of rows it changed."""
    async with conn.execute(sql, tuple(params)) as cur:
        return int(cur.rowcount)


async def query(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    """Read inside a write job (to see the job's own uncommitted changes)."""
    async with conn.execute(sql, tuple(params)) as cur:
        return list(await cur.fetchall())
