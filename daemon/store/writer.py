"""The single writer task: its queue, group commit, batches, and its supervision.

Why one writer: SQLite allows one writer at a time anyway; funnelling every write through one
task and one connection turns lock contention (and `database is locked` after busy_timeout)
into an ordered queue with back-pressure, and lets the writer batch work.

Group commit: jobs marked `groupable` that are queued together share one transaction and
therefore one commit (the webhook inbox answers 2xx only after its events are durable, so
concurrent deliveries would otherwise pay one fsync each). Within a group, consecutive jobs of
the same *batch function* (`write_batched`) are merged into one call of that function, which
writes every caller's items with one statement; so 64 concurrent webhook requests cost one
INSERT and one COMMIT, not 64 SAVEPOINT/INSERT/RELEASE round trips.

Isolation: when a group holds more than one job, each merged segment runs under a SAVEPOINT.
If a segment fails, it is rolled back alone; a failed batch is then retried item by item, each
under its own SAVEPOINT, so one caller's bad input fails that caller only. Every caller gets its
own result or exception through its future.

The queue is FIFO: long upkeep (retention, contacts rebuilds) is written as a series of short
jobs, each queued after the previous one finished, so a write queued meanwhile waits for one
chunk, never for the whole of it.

Supervision: the writer's end is always seen. If it stops for any reason but `close()` (an
unexpected exception, a broken connection), every waiting and later caller gets
`StoreError("store writer stopped: ...")`, `healthy` turns false and `wait_writer()` raises, so
the service can stop instead of acknowledging work it cannot store. `heartbeat` (the injected
clock's monotonic time of the writer's last loop turn) and `writer_fresh()` let a watchdog
notify systemd only while the writer is making progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite
import structlog

from daemon.clock import Clock
from daemon.errors import StoreError
from daemon.store.handoff import on_thread, shielded

log = structlog.get_logger(__name__)

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
WriteFn = Callable[[aiosqlite.Connection], Awaitable[T]]
# Called on the writer connection's own thread with the raw sqlite3 connection and the items of
# every caller merged into one segment, in queue order; returns one result per item, in order.
# Synchronous on purpose: see `_run_batch`.
BatchFn = Callable[[sqlite3.Connection, Sequence[P]], Sequence[R]]

QUEUE_SIZE = 1000
MAX_GROUP = 256


@dataclass
class StoreStats:
    """Counters for tests and /metrics: how well group commit is working."""

    commits: int = 0
    rollbacks: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    largest_group: int = 0
    batches: int = 0  # calls of a batch function (one per merged segment)
    batched_jobs: int = 0  # caller jobs those calls served
    largest_batch: int = 0


@dataclass(slots=True)
class _Job:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]] | None
    future: asyncio.Future[Any]
    groupable: bool = False
    transactional: bool = True
    batch: BatchFn[Any, Any] | None = None
    item: Any = None


_STOP = object()


class _ConnectionBroken(Exception):
    """BEGIN/COMMIT failed because the writer connection itself is gone: fatal to the writer."""


class _BatchFailed(Exception):
    """The batch function raised (not BEGIN or COMMIT): its callers may be retried one by one."""

    def __init__(self, cause: BaseException):
        super().__init__(repr(cause))
        self.cause = cause


def _batch_transaction(
    raw: sqlite3.Connection, batch: BatchFn[Any, Any], items: Sequence[Any]
) -> list[Any]:
    """BEGIN IMMEDIATE, the batch, COMMIT — on the writer thread, as one unit."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        try:
            results = list(batch(raw, items))
            if len(results) != len(items):
                raise StoreError(f"batch returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            raise _BatchFailed(exc) from exc
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return results


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


def _segments(jobs: Sequence[_Job]) -> list[list[_Job]]:
    """Consecutive jobs of the same batch function form one segment; any other job is one."""
    out: list[list[_Job]] = []
    for job in jobs:
        if job.batch is not None and out and out[-1][0].batch is job.batch:
            out[-1].append(job)
        else:
            out.append([job])
    return out


_Outcome = tuple[bool, Any]  # (succeeded, result or exception)


class WriterLoop:
    """The writer half of `Database`: the queue, the loop, and what the supervisor sees.

    `Database` owns the connections and calls `_start_writer()` once the writer connection is
    open; everything here runs on that connection.
    """

    clock: Clock
    read_only: bool
    _writer: aiosqlite.Connection | None
    _closed: bool

    def _init_writer(self) -> None:
        self.stats = StoreStats()
        self.heartbeat: float | None = None  # clock.monotonic() at the writer's last turn
        self._queue: asyncio.Queue[_Job | object] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = False
        self._ended = asyncio.Event()  # the writer task has finished, for whatever reason
        self._failure: str | None = None  # why the writer stopped, when it was not close()
        self._failure_cause: BaseException | None = None

    def _start_writer(self) -> None:
        self.heartbeat = self.clock.monotonic()
        # Callers' futures are made on this loop, the writer's own. Kept rather than asked for
        # per write: on Python 3.11, `asyncio.get_running_loop()` makes a getpid() system call
        # each time (a check for fork), one per webhook request.
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._write_loop(), name="store-writer")

    def _committed(self) -> str | None:
        """Hook: a group was committed (`Database` schedules background checkpoints). Returns
        why the writer must stop, when what was committed cannot be kept."""
        return None

    def _after_commit(self) -> None:
        problem = self._committed()
        if problem is not None:
            # Fatal, as a broken connection is: every caller of this group and every later one
            # gets `store writer stopped: ...` (the listener a 503), and the service stops.
            raise _ConnectionBroken() from StoreError(problem)

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

        Once queued, the job runs even if the caller is cancelled (only the caller's own future
        is cancelled): a write either happens or reports an error, never silently half-done.
        """
        return await self._submit(_Job(fn, self._new_future(), groupable, transactional))  # type: ignore[no-any-return]

    def write_batched(self, fn: BatchFn[P, R], item: P) -> Coroutine[Any, Any, R]:
        """Have the writer call `fn(conn, [item, ...])` once for every caller queued together.

        `fn` must return one result per item, in order; merging needs the *same* function
        object, so pass a module-level function, not a closure. The call shares its group's
        transaction like a `groupable` write. Should `fn` raise, it is called again for each
        item alone, so only the callers whose item fails see the exception.
        """
        job = _Job(None, self._new_future(), groupable=True, batch=fn, item=item)
        # The submission itself, not a coroutine awaiting it: one level less to create and
        # resume per webhook request.
        return self._submit(job)

    def _new_future(self) -> asyncio.Future[Any]:
        if self._loop is None:  # not started: `_submit` refuses the job
            return asyncio.get_running_loop().create_future()
        return self._loop.create_future()

    async def _submit(self, job: _Job) -> Any:
        if self._failure is not None:
            raise self._stopped_error()
        if self._closed or self._task is None:
            raise StoreError("store is closed" if not self.read_only else "store is read-only")
        try:
            self._queue.put_nowait(job)  # the usual case, without a coroutine per request
        except asyncio.QueueFull:
            await self._queue.put(job)
        if self._ended.is_set():  # queued behind the writer's end: it will never run
            self._settle_leftover(job.future)
        try:
            # Not shielded: a cancelled caller cancels only its own future, which `_settle`
            # then skips; the queued job still runs (nothing in the writer looks at it). A
            # shield cost a second future and two more callbacks on every webhook request.
            return await job.future
        except sqlite3.Error as exc:
            raise StoreError(f"database write failed: {exc}") from exc

    # -- the loop ----------------------------------------------------------------------------

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
            assert job.fn is not None
            try:
                result = await job.fn(conn)
            except Exception as exc:
                self.stats.failed_jobs += 1
                _settle(job.future, exc=exc)
            else:
                _settle(job.future, result=result)
            return
        segments = _segments(jobs)
        if len(segments) == 1 and jobs[0].batch is not None:
            await self._run_batch(conn, jobs)
        elif len(segments) == 1:
            await self._in_transaction(conn, jobs, saved=False)
        else:
            await self._in_transaction(conn, jobs, segments)

    async def _in_transaction(
        self,
        conn: aiosqlite.Connection,
        jobs: Sequence[_Job],
        segments: Sequence[Sequence[_Job]] = (),
        *,
        saved: bool = True,
    ) -> None:
        """The group in one transaction: each segment under a SAVEPOINT (`saved`), or the one
        plain job alone, whose failure the ROLLBACK undoes. Committed if anything succeeded;
        every caller gets its own result or exception."""
        outcomes: list[_Outcome] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            if not saved:
                outcomes = await self._run_alone(conn, jobs[0])
            else:
                for segment in segments:
                    outcomes += await self._run_saved(conn, segment)
            if any(ok for ok, _ in outcomes):
                await shielded(conn.execute("COMMIT"))
                self.stats.commits += 1
                self._after_commit()
            else:
                await shielded(conn.execute("ROLLBACK"))
                self.stats.rollbacks += 1
        except _ConnectionBroken:
            raise
        except Exception as exc:
            if _broken(exc):
                raise _ConnectionBroken() from exc
            # BEGIN or COMMIT failed (locked past busy_timeout, disk full): nothing landed.
            with contextlib.suppress(sqlite3.Error, ValueError):
                if conn.in_transaction:
                    await shielded(conn.execute("ROLLBACK"))
            self.stats.rollbacks += 1
            for job in jobs:
                _settle(job.future, exc=exc)
            return
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                _settle(job.future, result=value)
            else:
                _settle(job.future, exc=value)

    async def _call(self, conn: aiosqlite.Connection, segment: Sequence[_Job]) -> list[Any]:
        """Run one segment: one batch call for all its jobs, or the one plain job."""
        first = segment[0]
        if first.batch is None:
            assert first.fn is not None and len(segment) == 1
            return [await first.fn(conn)]
        self._count_batch(segment)
        results = list(await on_thread(conn, first.batch, [job.item for job in segment]))
        if len(results) != len(segment):
            raise StoreError(f"batch returned {len(results)} results for {len(segment)} items")
        return results

    def _count_batch(self, segment: Sequence[_Job]) -> None:
        self.stats.batches += 1
        self.stats.batched_jobs += len(segment)
        self.stats.largest_batch = max(self.stats.largest_batch, len(segment))

    async def _run_batch(self, conn: aiosqlite.Connection, jobs: Sequence[_Job]) -> None:
        """The ingest fast path — a group that is one batch: BEGIN, the batch and COMMIT in one
        hand-off to the writer thread (`on_thread`). Should the batch raise, its callers are
        tried one by one under SAVEPOINTs, so only those whose items fail see an error."""
        batch = jobs[0].batch
        assert batch is not None
        self._count_batch(jobs)
        try:
            results = await shielded(
                on_thread(conn, _batch_transaction, batch, [job.item for job in jobs])
            )
        except _BatchFailed as failed:
            self.stats.rollbacks += 1
            if len(jobs) == 1:
                self.stats.failed_jobs += 1
                _settle(jobs[0].future, exc=failed.cause)
                return
            await self._run_one_by_one(conn, jobs)
            return
        except Exception as exc:
            if _broken(exc):
                raise _ConnectionBroken() from exc
            # BEGIN or COMMIT failed (locked past busy_timeout, disk full): nothing landed.
            self.stats.rollbacks += 1
            for job in jobs:
                _settle(job.future, exc=exc)
            return
        self.stats.commits += 1
        self._after_commit()
        for job, result in zip(jobs, results, strict=True):
            _settle(job.future, result=result)

    async def _run_one_by_one(self, conn: aiosqlite.Connection, jobs: Sequence[_Job]) -> None:
        """Each job of a failed batch under its own SAVEPOINT, all in one transaction."""
        await self._in_transaction(conn, jobs, [[job] for job in jobs])

    async def _run_alone(self, conn: aiosqlite.Connection, job: _Job) -> list[_Outcome]:
        """One plain job alone in its transaction: no SAVEPOINT; a failure is undone by the
        caller's ROLLBACK."""
        try:
            return [(True, r) for r in await self._call(conn, [job])]
        except Exception as exc:
            # A broken connection shows at the ROLLBACK that follows, and stops the writer.
            self.stats.failed_jobs += 1
            return [(False, exc)]

    async def _run_saved(
        self, conn: aiosqlite.Connection, segment: Sequence[_Job]
    ) -> list[_Outcome]:
        """Run a segment under a SAVEPOINT; on failure undo it and, for a batch, try each
        caller's item alone so that only the failing ones fail."""
        await conn.execute("SAVEPOINT job")
        try:
            results = await self._call(conn, segment)
        except Exception as exc:
            await conn.execute("ROLLBACK TO job")  # raises if the connection itself is gone
            await conn.execute("RELEASE job")
            if len(segment) == 1:
                self.stats.failed_jobs += 1
                return [(False, exc)]
            outcomes: list[_Outcome] = []
            for job in segment:
                outcomes += await self._run_saved(conn, [job])
            return outcomes
        await conn.execute("RELEASE job")
        return [(True, r) for r in results]
