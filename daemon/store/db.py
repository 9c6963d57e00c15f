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

Supervision: the writer is one task whose end is always seen. If it stops for any reason but
`close()` (an unexpected exception, a broken connection), every waiting and later caller gets
`StoreError("store writer stopped: ...")`, `healthy` turns false and `wait_writer()` raises, so
the service can stop instead of acknowledging work it cannot store. `heartbeat` (the injected
clock's monotonic time of the writer's last loop turn) and `writer_fresh()` let a watchdog
notify systemd only while the writer is making progress.

`close()` cannot be cut short: it runs to the end even when the caller is cancelled (an anyio
cancel scope or `Task.cancel()`), commits what was queued before it, and closes both
connections in a `finally`, so aiosqlite's threads never keep the process alive. It is bounded
by `close_timeout` (real time: it guards against a stuck SQLite call, not a schedule).

The database file and its `-wal`/`-shm` companions are private (0600): the file is created
with that mode before SQLite opens it, and wider modes found on existing files are tightened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite
import anyio
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
CLOSE_TIMEOUT = 30.0  # seconds for close() to drain the queue before it gives up on it
CONN_CLOSE_TIMEOUT = 10.0  # seconds for each connection to close (past busy_timeout)
FILE_MODE = 0o600
COMPANIONS = ("-wal", "-shm", "-journal")
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


class _ConnectionBroken(Exception):
    """BEGIN/COMMIT failed because the writer connection itself is gone: fatal to the writer."""


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


async def _run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` in its own task to the end whatever happens to the caller, then re-raise a
    cancellation the caller received meanwhile.

    Both kinds are held off: an anyio cancel scope (by the shielded scope, which also stops
    anyio re-delivering the cancellation in a loop) and `Task.cancel()`, which passes through
    anyio's shield and is therefore caught and remembered.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        with contextlib.suppress(BaseException):
            task.result()  # retrieved, so asyncio does not report it as lost
        raise asyncio.CancelledError
    return task.result()


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
        await _run_to_end(_close_conn(conn))
        raise
    return conn


async def _close_conn(conn: aiosqlite.Connection) -> None:
    """Close one connection within CONN_CLOSE_TIMEOUT; its thread is told to stop either way
    (aiosqlite's close stops it in a `finally`), so it cannot keep the process alive."""
    with anyio.move_on_after(CONN_CLOSE_TIMEOUT) as scope:
        try:
            await conn.close()
        except Exception as exc:  # a broken connection still has its thread stopped
            log.warning("store.close_failed", error=repr(exc))
    if scope.cancelled_caught:
        log.error("store.close_timeout", seconds=CONN_CLOSE_TIMEOUT)


def _tighten(path: Path) -> None:
    """Make an existing file 0600 if group or others have any access to it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, FILE_MODE)
        log.warning("store.permissions_tightened", path=str(path), was=f"{mode:04o}")


def _private_file(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it (SQLite gives `-wal` and
    `-shm` the database file's mode), or tighten an existing one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        _tighten(path)
        return
    try:
        os.fchmod(fd, FILE_MODE)  # a umask could have taken owner bits
    finally:
        os.close(fd)


class Database:
    """The connection-owning core of `Store`; repositories add their methods on top."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        read_only: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self.close_timeout = close_timeout
        self.stats = StoreStats()
        self.heartbeat: float | None = None  # clock.monotonic() at the writer's last turn
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Job | object] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._idle = False
        self._ended = asyncio.Event()  # the writer task has finished, for whatever reason
        self._failure: str | None = None  # why the writer stopped, when it was not close()
        self._failure_cause: BaseException | None = None
        self._closed = False
        self._close_done: asyncio.Event | None = None
        self._record_tables: dict[str, bool] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        path: Path,
        *,
        clock: Clock,
        read_only: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> Self:
        """Open (creating and migrating unless `read_only`) and start the writer task.

        `read_only` is for inspection commands (`daemon status`): it never creates the file,
        never migrates and refuses writes, so it is safe beside a running service.
        """
        store = cls(path, clock=clock, read_only=read_only, close_timeout=close_timeout)
        try:
            await store._open()
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock,
        read_only: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> AsyncIterator[Self]:
        store = await cls.connect(
            path, clock=clock, read_only=read_only, close_timeout=close_timeout
        )
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
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_file(self.path)
            self._writer = await _connect(str(self.path))
            await migrate(self._writer, str(self.path))
            self._reader = await _connect(str(self.path))
            await self._reader.execute("PRAGMA query_only = ON")
            self._reader.row_factory = sqlite3.Row
            for suffix in COMPANIONS:  # left over from a time the file was not private
                _tighten(self.path.with_name(self.path.name + suffix))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from exc
        self.heartbeat = self.clock.monotonic()
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close both connections.

        Runs to the end even if the caller is cancelled (the cancellation is re-raised after).
        Writes queued before `close()` are committed; if the writer is dead, or does not drain
        within `close_timeout`, their callers get `StoreError` instead. Both connections are
        closed whatever happened. Safe to call twice; a second call waits for the first.
        """
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._closed = True
        self._close_done = asyncio.Event()
        try:
            await _run_to_end(self._shutdown())
        finally:
            self._close_done.set()

    async def _shutdown(self) -> None:
        try:
            task = self._task
            if task is not None and not task.done():
                with anyio.move_on_after(self.close_timeout):
                    await self._queue.put(_STOP)
                    await asyncio.wait({task})
                if not task.done():
                    log.error("store.close_timeout", seconds=self.close_timeout)
                    if self._writer is not None:
                        with contextlib.suppress(Exception):
                            await self._writer.interrupt()  # a long statement stops now
                    task.cancel()
                    with anyio.move_on_after(CONN_CLOSE_TIMEOUT):
                        await asyncio.wait({task})
        finally:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    await _close_conn(conn)
            self._writer = self._reader = None
            self._ended.set()  # also when the writer never started

    # -- supervision -------------------------------------------------------------------------

    @property
    def writer_alive(self) -> bool:
        """The writer task is running."""
        return self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Writes can be taken: the writer runs, has not failed, and the store is not closing."""
        return self.writer_alive and self._failure is None and not self._closed

    @property
    def writer_error(self) -> StoreError | None:
        """Why the writer stopped when it did not end cleanly (it died, or `close()` had to
        cancel it); None while it runs and after a clean close."""
        return None if self._failure is None else self._stopped_error()

    def writer_fresh(self, max_age: float) -> bool:
        """For a watchdog: the writer is alive and either waiting for work or its last loop
        turn was at most `max_age` seconds ago on the store's clock."""
        if not self.healthy or self.heartbeat is None:
            return False
        # Waiting on the queue is not being stuck, even if a job arrived a moment ago.
        return self._idle or self.clock.monotonic() - self.heartbeat <= max_age

    async def wait_writer(self) -> None:
        """Wait for the writer task to end: returns after `close()` stopped it, raises the
        `StoreError` that stopped it otherwise. A supervisor runs this in its task group."""
        if self.read_only:
            raise StoreError("store is read-only: it has no writer")
        await self._ended.wait()
        if self._failure is not None:
            raise self._stopped_error()

    def _stopped_error(self) -> StoreError:
        err = StoreError(f"store writer stopped: {self._failure}")
        err.__cause__ = self._failure_cause
        return err

    # -- writes ------------------------------------------------------------------------------

    async def write(
        self, fn: WriteFn[T], *, groupable: bool = False, transactional: bool = True
    ) -> T:
        """Run `fn(conn)` on the writer connection inside a transaction and return its result.

        Once queued, the job runs even if the caller is cancelled (the wait is shielded): a
        write either happens or reports an error, it is never silently half-done.
        """
        if self._failure is not None:
            raise self._stopped_error()
        if self._closed or self._task is None:
            raise StoreError("store is closed" if not self.read_only else "store is read-only")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(fn, future, groupable, transactional))
        if self._ended.is_set():  # queued behind the writer's end: it will never run
            self._settle_leftover(future)
        try:
            return await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise StoreError(f"database write failed: {exc}") from exc

    def _beat(self) -> None:
        self.heartbeat = self.clock.monotonic()

    async def _write_loop(self) -> None:
        carry: _Job | object | None = None
        pending: list[_Job] = []
        stopping = False
        try:
            while True:
                self._beat()
                if carry is None and self._queue.empty():
                    if stopping:
                        return
                    self._idle = True
                item = carry if carry is not None else await self._queue.get()
                self._idle = False
                self._beat()
                carry = None
                if item is _STOP:
                    stopping = True  # finish what was queued, then end
                    continue
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
                self._beat()
        except BaseException as exc:
            self._writer_died(exc, pending, carry)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            # Otherwise it is recorded and reported to every caller and to wait_writer().
        finally:
            self._idle = False
            self._ended.set()
            self._drain_leftovers()

    def _writer_died(self, exc: BaseException, pending: list[_Job], carry: object) -> None:
        cause = exc.__cause__ if isinstance(exc, _ConnectionBroken) else exc
        if isinstance(exc, asyncio.CancelledError) and self._closed:
            self._failure = "store closed before the write ran"
        else:
            self._failure = repr(cause)
            log.error("store.writer_failed", error=repr(cause))
        self._failure_cause = cause
        for job in [*pending, *([carry] if isinstance(carry, _Job) else [])]:
            _settle(job.future, exc=self._stopped_error())

    def _settle_leftover(self, future: asyncio.Future[Any]) -> None:
        if self._failure is not None:
            _settle(future, exc=self._stopped_error())
        else:
            _settle(future, exc=StoreError("store is closed"))

    def _drain_leftovers(self) -> None:
        """Jobs still queued when the writer ended never run: tell their callers so."""
        while not self._queue.empty():
            left = self._queue.get_nowait()
            if isinstance(left, _Job):
                self._settle_leftover(left.future)

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
            if _broken(exc):
                raise _ConnectionBroken() from exc
            # BEGIN or COMMIT failed (locked past busy_timeout, disk full): nothing landed.
            with contextlib.suppress(sqlite3.Error, ValueError):
                if conn.in_transaction:
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


def _broken(exc: BaseException) -> bool:
    """The connection itself is unusable (closed underneath us), not just this transaction:
    aiosqlite says `ValueError('Connection closed')`, sqlite3 a `ProgrammingError`."""
    return isinstance(exc, ValueError | sqlite3.ProgrammingError)


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
