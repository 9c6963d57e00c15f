"""Connections and the lifecycle of the store; the writer itself is in `daemon.store.writer`.

`Database` owns three connections: the writer's (fed by one task, see `writer.py`), a reader,
and one that checkpoints the WAL beside the writer (`checkpoints.py`). Reads use the reader: in
WAL mode it sees the last committed state and never blocks the writer.

`close()` cannot be cut short: it runs to the end even when the caller is cancelled (an anyio
cancel scope or `Task.cancel()`), commits what was queued before it, and closes all
connections in a `finally`, so aiosqlite's threads never keep the process alive. It is bounded
by `close_timeout` (real time: it guards against a stuck SQLite call, not a schedule).

Durability of a commit is `synchronous` (docs/database.md, "Durability"). The default, `FULL`,
syncs the WAL at each commit, so what `write()` has returned survives a power cut or an OS
crash: a webhook's 2xx promises that. `NORMAL` survives a crash of the process only. Group
commit makes `FULL` cheap: one sync per group of concurrent callers (bench/store_ingest.py).

The database file and its companions are private (0600): see `daemon.store.files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Self

import aiosqlite
import anyio
import structlog

from daemon.clock import Clock
from daemon.errors import DatabaseMismatch, StoreError
from daemon.store.checkpoints import SAFETY_PAGES, Checkpointer
from daemon.store.filecheck import Identity, identity
from daemon.store.files import private_file, tighten_companions
from daemon.store.handoff import on_thread, run_to_end, shielded
from daemon.store.schema import SCHEMA_VERSION, migrate, newer_schema, user_version
from daemon.store.util import to_db
from daemon.store.writer import _STOP, BatchFn, StoreStats, WriteFn, WriterLoop

log = structlog.get_logger(__name__)

__all__ = ["BatchFn", "Database", "StoreStats", "WriteFn", "execute", "query", "transaction"]

Synchronous = Literal["NORMAL", "FULL"]
DEFAULT_SYNCHRONOUS: Synchronous = "FULL"
MIN_SQLITE = (3, 35, 0)  # INSERT ... RETURNING
CLOSE_TIMEOUT = 30.0  # seconds for close() to drain the queue before it gives up on it
CONN_CLOSE_TIMEOUT = 10.0  # seconds for each connection to close (past busy_timeout)
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    # Statement journals (every multi-row INSERT of a webhook group needs one) stay in memory
    # instead of spilling to a temp file past 64 KiB: a create, writes and an unlink per group.
    "PRAGMA temp_store = MEMORY",
    f"PRAGMA wal_autocheckpoint = {SAFETY_PAGES}",  # checkpoints run beside it: checkpoints.py
)
# A read-only connection cannot switch the journal mode; the writer already did.
READ_ONLY_PRAGMAS = ("PRAGMA busy_timeout = 5000", "PRAGMA foreign_keys = ON")


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
        await shielded(conn.execute("ROLLBACK"))
        raise
    await shielded(conn.execute("COMMIT"))


async def _connect(
    target: str, *, uri: bool = False, synchronous: Synchronous = DEFAULT_SYNCHRONOUS
) -> aiosqlite.Connection:
    conn = aiosqlite.connect(target, isolation_level=None, uri=uri)
    try:
        await conn
    except BaseException:
        # aiosqlite stops its thread after a failed connect with a close it does not wait for,
        # whose answer then lands on our loop: wait for the thread, or a caller that closes
        # the loop next (a CLI command, a test) gets "Event loop is closed" from that thread.
        await _thread_ended(conn)
        raise
    try:
        pragmas = READ_ONLY_PRAGMAS if uri else (*PRAGMAS, f"PRAGMA synchronous = {synchronous}")
        await on_thread(conn, _run_pragmas, pragmas)  # one hand-off, not one per pragma
    except BaseException:
        await run_to_end(_close_conn(conn))
        raise
    return conn


async def _thread_ended(conn: aiosqlite.Connection) -> None:
    thread = getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        await asyncio.to_thread(thread.join, CONN_CLOSE_TIMEOUT)


JSON_PROBE = "SELECT json_group_array(json_array(1)), json_each.value FROM json_each('[1]')"


async def _require_json(conn: aiosqlite.Connection) -> None:
    """Record writes and the inbox read rows back as one JSON row (`records._upsert`,
    `ingest`), and claims pass id lists through `json_each` (`inbox`): say so at open, not at
    the first write.
    SQLite has had the JSON functions built in since 3.38; nearly every 3.35-3.37 build has
    them enabled."""
    try:
        await conn.execute(JSON_PROBE)
    except sqlite3.OperationalError as exc:
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} was built without its JSON functions, "
            "which the store needs"
        ) from exc


def _run_pragmas(raw: sqlite3.Connection, pragmas: Iterable[str]) -> None:
    for pragma in pragmas:
        raw.execute(pragma).fetchall()


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


def _refuse_non_regular(path: Path) -> None:
    """A directory, FIFO or device is never a database: say so before SQLite opens it (on a
    FIFO SQLite fails only at its first read, with "disk I/O error")."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # created by the open (a dangling link's target included)
    if not stat.S_ISREG(mode):
        raise StoreError(f"{path}: cannot open database: not a regular file")


def _read_only_uri(path: Path) -> str:
    """The URI an inspection command reads `path` by. A reader of a WAL database creates the
    `-wal` and `-shm` files when they are missing, and cannot where the directory is not
    writable ("attempt to write a readonly database", found by probing). No `-shm` means no
    connection is open anywhere (one in WAL mode keeps it), so the file is read as it stands
    (`immutable=1`), leaving nothing behind; the pre-check (`commands.common`) reads it the same
    way. A service starting meanwhile writes to its new WAL, not to the file, until its first
    checkpoint: far longer than such a read takes."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return uri if os.path.exists(f"{path}-shm") else uri + "&immutable=1"


class Database(WriterLoop):
    """The connection-owning core of `Store`; repositories add their methods on top."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        read_only: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
        synchronous: Synchronous = DEFAULT_SYNCHRONOUS,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.clock = clock
        self.read_only = read_only
        self.close_timeout = close_timeout
        self.synchronous: Synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpoints: Checkpointer | None = None
        self._closed = False
        self._close_done: asyncio.Event | None = None
        self._record_tables: dict[str, bool] = {}
        self._opened: Identity | None = None  # the file the writer opened (device, inode)
        self._init_writer()

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        path: Path,
        *,
        clock: Clock,
        read_only: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
        synchronous: Synchronous = DEFAULT_SYNCHRONOUS,
    ) -> Self:
        """Open (creating and migrating unless `read_only`) and start the writer task.

        `read_only` is for inspection commands (`daemon status`): it never creates the file,
        never migrates and refuses writes, so it is safe beside a running service.
        """
        store = cls(
            path,
            clock=clock,
            read_only=read_only,
            close_timeout=close_timeout,
            synchronous=synchronous,
        )
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
        synchronous: Synchronous = DEFAULT_SYNCHRONOUS,
    ) -> AsyncIterator[Self]:
        store = await cls.connect(
            path,
            clock=clock,
            read_only=read_only,
            close_timeout=close_timeout,
            synchronous=synchronous,
        )
        try:
            yield store
        finally:
            await store.close()

    async def _open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise DatabaseMismatch(
                f"SQLite {sqlite3.sqlite_version} is too old: the store needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (INSERT ... RETURNING)"
            )
        try:
            if self.read_only:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: database does not exist")
                _refuse_non_regular(self.path)
                self._reader = await _connect(_read_only_uri(self.path), uri=True)
                self._reader.row_factory = sqlite3.Row
                version = await user_version(self._reader)
                if version > SCHEMA_VERSION:
                    raise DatabaseMismatch(newer_schema(self.path, version))
                if version != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: schema version {version}, this daemon expects "
                        f"{SCHEMA_VERSION}; start the service (or run-once) to migrate it"
                    )
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _refuse_non_regular(self.path)
            private_file(self.path)
            self._writer = await _connect(str(self.path), synchronous=self.synchronous)
            self._opened = identity(self.path)
            await _require_json(self._writer)
            await migrate(self._writer, str(self.path))
            self._reader = await _connect(str(self.path))
            await self._reader.execute("PRAGMA query_only = ON")
            self._reader.row_factory = sqlite3.Row
            self._checkpoints = Checkpointer(
                await _connect(str(self.path), synchronous=self.synchronous)
            )
            tighten_companions(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from exc
        self._start_writer()
        self._checkpoints.start()

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections.

        Runs to the end even if the caller is cancelled (the cancellation is re-raised after).
        Writes queued before `close()` are committed; if the writer is dead, or does not drain
        within `close_timeout`, their callers get `StoreError` instead. The connections are
        closed whatever happened. Safe to call twice; a second call waits for the first.
        """
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._closed = True
        self._close_done = asyncio.Event()
        try:
            await run_to_end(self._shutdown())
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
            checkpoints, self._checkpoints = self._checkpoints, None
            if checkpoints is not None:
                await checkpoints.stop()
            spare = None if checkpoints is None else checkpoints.conn
            for conn in (self._writer, self._reader, spare):
                if conn is not None:
                    await _close_conn(conn)
            self._writer = self._reader = None
            self._ended.set()  # also when the writer never started

    # -- reads -------------------------------------------------------------------------------

    def _committed(self) -> str | None:
        if self._checkpoints is not None:
            self._checkpoints.committed()
        # One stat() a commit (not a request): once the path names another file, or none,
        # what was just committed is lost at the next start, so it must not be acknowledged.
        if self._opened is not None and identity(self.path) != self._opened:
            return (
                f"the database file {self.path} is gone or was replaced (deleted, renamed or "
                "restored over): what is written now would be lost at the next start"
            )
        return None

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is closed")
        return self._reader

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Run a query on the read connection; rows support access by column name.

        One turn on the connection's thread, start to finish: reads share the connection, and
        SQLite runs a statement started while another is still open in that one's read
        transaction. As three turns (execute, fetch, close), another read's turn could fall
        in between, and a read that began after a commit could see the snapshot from before
        it: the sync's closing recount, right after its last page committed, now and then
        counted that page's rows as unseen and called a whole walk incomplete."""
        conn = self._read_conn()
        try:
            rows = await conn.execute_fetchall(sql, tuple(params))
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
        the WAL and the truncation will be retried next time. It runs as a writer job (writes
        queue behind it, as behind any job) on the checkpoint connection, so it never collides
        with a background checkpoint.
        """

        async def job(conn: aiosqlite.Connection) -> tuple[int, int, int]:
            if self._checkpoints is not None:
                return await self._checkpoints.run("TRUNCATE")
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


async def execute(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
    """Run one statement on the writer and return the number of rows it changed."""
    async with conn.execute(sql, tuple(params)) as cur:
        return int(cur.rowcount)


async def query(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    """Read inside a write job (to see the job's own uncommitted changes)."""
    async with conn.execute(sql, tuple(params)) as cur:
        return list(await cur.fetchall())
