"""The store's lifecycle on real SQLite files: close under cancellation keeps queued writes, a
dead writer is reported to callers and supervisors, close never hangs, and files are private."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import anyio
import pytest
from structlog.testing import capture_logs

import daemon.store.db as db_module
from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import Store

pytestmark = pytest.mark.timeout(60)


def sqlite_threads() -> set[threading.Thread]:
    """aiosqlite's per-connection worker threads that are still alive."""
    return {
        t for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive()
    }


def assert_threads_gone(threads: set[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=10)
    assert not [t for t in threads if t.is_alive()]


async def settle() -> None:
    """Let every ready task run once or twice (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Gate:
    """A write job that holds the writer until released, so later writes queue up behind it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, conn: aiosqlite.Connection) -> str:
        self.entered.set()
        await self.release.wait()
        return "held"

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), timeout=10)


async def run_count(db_path: Path, clock: FakeClock) -> int:
    async with Store.open(db_path, clock=clock) as again:
        return len(await again.last_runs())


# -- close under cancellation ------------------------------------------------------------------


async def test_queued_writes_survive_close_when_the_closing_task_is_cancelled(
    db_path: Path, clock: FakeClock
) -> None:
    store = await Store.connect(db_path, clock=clock)
    threads = sqlite_threads()
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await gate.wait_entered()
    writers = [asyncio.ensure_future(store.start_run(f"j{i}")) for i in range(200)]
    await settle()
    assert store._queue.qsize() == 200  # all queued behind the held job
    for w in writers[::2]:
        w.cancel()  # a cancelled caller's write still lands
    closer = asyncio.ensure_future(store.close())
    await settle()
    closer.cancel()
    await settle()
    assert not closer.done()  # close keeps going until its work is done
    gate.release.set()
    done, _ = await asyncio.wait({closer}, timeout=30)
    assert closer in done and closer.cancelled()  # ... then the cancellation goes through
    assert await held == "held"
    assert len([w for w in writers if not w.cancelled() and w.result()]) == 100
    assert_threads_gone(threads)
    assert not store.healthy
    with pytest.raises(StoreError, match="closed"):
        await store.start_run("late")
    assert await run_count(db_path, clock) == 200


async def test_queued_writes_survive_close_inside_a_cancelled_anyio_scope(
    db_path: Path, clock: FakeClock
) -> None:
    store = await Store.connect(db_path, clock=clock)
    threads = sqlite_threads()
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, gate)
        await gate.wait_entered()
        for i in range(200):
            tg.start_soon(store.start_run, f"j{i}")
        await settle()
        assert store._queue.qsize() == 200
        tg.cancel_scope.cancel()  # shutdown: every caller is cancelled, close runs inside it
        asyncio.get_running_loop().call_soon(gate.release.set)
        await store.close()
    assert_threads_gone(threads)
    assert await run_count(db_path, clock) == 200


async def test_close_is_idempotent_and_concurrent_calls_wait_for_the_first(
    db_path: Path, clock: FakeClock
) -> None:
    store = await Store.connect(db_path, clock=clock)
    threads = sqlite_threads()
    pending = [asyncio.ensure_future(store.start_run(f"j{i}")) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(store.close(), store.close()), timeout=30)
    assert len(await asyncio.gather(*pending)) == 20
    assert_threads_gone(threads)
    await store.close()
    await store.wait_writer()  # a clean close is not a failure
    with pytest.raises(StoreError, match="closed"):
        await store.fetchall("SELECT 1")


# -- a writer that dies ------------------------------------------------------------------------


class Boom(BaseException):
    """Not an `Exception`: escapes the per-job handling, as a bug in the loop would."""


async def test_dead_writer_fails_every_caller_and_is_reported(
    db_path: Path, clock: FakeClock
) -> None:
    store = await Store.connect(db_path, clock=clock)
    threads = sqlite_threads()
    gate = Gate()

    async def explode(conn: aiosqlite.Connection) -> None:
        await gate(conn)
        await conn.execute("INSERT INTO sync_runs (job, started_at) VALUES ('lost', 'x')")
        raise Boom("kaboom")

    dying = asyncio.ensure_future(store.write(explode))
    await gate.wait_entered()
    waiting = [asyncio.ensure_future(store.start_run(f"j{i}")) for i in range(5)]
    supervisor = asyncio.ensure_future(store.wait_writer())
    await settle()
    assert store.healthy and store.writer_alive and not supervisor.done()
    with capture_logs() as logs:
        gate.release.set()
        results = await asyncio.wait_for(
            asyncio.gather(dying, *waiting, return_exceptions=True), timeout=30
        )
        with pytest.raises(StoreError, match=r"store writer stopped: Boom\('kaboom'\)"):
            await asyncio.wait_for(supervisor, timeout=10)
    assert all(isinstance(r, StoreError) for r in results), results
    assert all(str(r).startswith("store writer stopped: Boom") for r in results)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["store.writer_failed"]
    assert not store.healthy and not store.writer_alive
    assert isinstance(store.writer_error, StoreError)
    assert not store.writer_fresh(3600)
    with pytest.raises(StoreError, match="store writer stopped"):
        await store.start_run("later")
    assert await store.fetchall("SELECT 1")  # reads still work until close

    await asyncio.wait_for(store.close(), timeout=30)
    await store.close()
    assert_threads_gone(threads)
    with pytest.raises(StoreError, match="store writer stopped"):
        await store.wait_writer()
    assert await run_count(db_path, clock) == 0  # the broken transaction was rolled back


async def test_a_broken_connection_stops_the_writer(db_path: Path, clock: FakeClock) -> None:
    store = await Store.connect(db_path, clock=clock)
    threads = sqlite_threads()
    await store.start_run("before")
    assert store._writer is not None
    await store._writer.close()  # the connection goes away underneath the writer
    with pytest.raises(StoreError, match="store writer stopped: ValueError"):
        await asyncio.wait_for(store.start_run("after"), timeout=10)
    with pytest.raises(StoreError, match="store writer stopped"):
        await asyncio.wait_for(store.wait_writer(), timeout=10)
    assert not store.healthy
    await store.close()
    assert_threads_gone(threads)
    assert await run_count(db_path, clock) == 1


async def test_close_gives_up_on_a_stuck_writer_within_its_timeout(
    db_path: Path, clock: FakeClock
) -> None:
    store = await Store.connect(db_path, clock=clock, close_timeout=0)
    threads = sqlite_threads()
    gate = Gate()  # never released: the job would hold the writer forever
    stuck = asyncio.ensure_future(store.write(gate))
    await gate.wait_entered()
    queued = [asyncio.ensure_future(store.start_run(f"j{i}")) for i in range(3)]
    await settle()
    with capture_logs() as logs:
        await asyncio.wait_for(store.close(), timeout=30)
    results = await asyncio.gather(stuck, *queued, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results), results
    assert all("store closed before the write ran" in str(r) for r in results)
    assert "store.close_timeout" in [e["event"] for e in logs]
    assert_threads_gone(threads)
    with pytest.raises(StoreError, match="store writer stopped"):
        await store.wait_writer()


# -- heartbeat ---------------------------------------------------------------------------------


async def test_heartbeat_tracks_the_writer_on_the_injected_clock(
    store: Store, clock: FakeClock
) -> None:
    assert store.heartbeat == clock.monotonic()
    assert store.writer_fresh(60)
    clock.advance(600)
    assert store.writer_fresh(60)  # idle is fresh: waiting for work is not being stuck
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await gate.wait_entered()
    clock.advance(30)
    assert store.writer_fresh(60)
    clock.advance(31)
    assert not store.writer_fresh(60)  # busy in one job for 61 s
    assert store.healthy  # alive, just slow: the watchdog decides
    gate.release.set()
    assert await held == "held"
    assert store.heartbeat == clock.monotonic()
    assert store.writer_fresh(60)


# -- file permissions --------------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(db_path: Path) -> dict[str, int]:
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = db_path.with_name(db_path.name + suffix)
        out[suffix or "db"] = stat.S_IMODE(p.stat().st_mode) if p.exists() else -1
    return out


@pytest.mark.usefixtures("permissive_umask")
async def test_new_database_files_are_private(db_path: Path, clock: FakeClock) -> None:
    with capture_logs() as logs:
        async with Store.open(db_path, clock=clock) as store:
            await store.start_run("j")
            assert modes(db_path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert "store.permissions_tightened" not in [e["event"] for e in logs]


@pytest.mark.usefixtures("permissive_umask")
async def test_a_dangling_symlink_gets_a_private_file(tmp_path: Path, clock: FakeClock) -> None:
    """`state.db -> data/state.db` before the first run: the file the link names is created
    0600, not left for SQLite to create under the umask (found in review: 0644, client PII)."""
    (tmp_path / "data").mkdir()
    link = tmp_path / "state.db"
    link.symlink_to(tmp_path / "data" / "state.db")
    async with Store.open(link, clock=clock) as store:
        await store.start_run("j")
    assert stat.S_IMODE((tmp_path / "data" / "state.db").stat().st_mode) == 0o600


@pytest.mark.usefixtures("permissive_umask")
async def test_what_is_not_a_regular_file_is_never_chmodded(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A database path naming a directory, or a device such as /dev/null through a link, is
    refused by the open; its mode is not ours to change (a review's /dev/null became 0600)."""
    directory = tmp_path / "dir.db"
    directory.mkdir(mode=0o755)
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo, 0o644)
    for path, mode in ((directory, 0o755), (fifo, 0o644)):
        with contextlib.suppress(Exception):
            async with Store.open(path, clock=clock):
                pass
        assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.usefixtures("permissive_umask")
async def test_existing_readable_files_are_tightened(db_path: Path, clock: FakeClock) -> None:
    # Made by another tool under umask 022, still open, so its -wal and -shm exist too.
    raw = sqlite3.connect(db_path)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("CREATE TABLE notes (x)")
        raw.commit()
        assert modes(db_path) == {"db": 0o644, "-wal": 0o644, "-shm": 0o644}
        with capture_logs() as logs:
            async with Store.open(db_path, clock=clock) as store:
                await store.start_run("j")
                assert modes(db_path) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        raw.close()
    tightened = [e for e in logs if e["event"] == "store.permissions_tightened"]
    assert sorted(Path(e["path"]).name for e in tightened) == [
        "state.db",
        "state.db-shm",
        "state.db-wal",
    ]
    assert {e["was"] for e in tightened} == {"0644"}


async def test_a_directory_or_fifo_is_refused_before_sqlite_opens_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo, 0o600)
    before = {t.ident for t in threading.enumerate()}
    for path in (tmp_path, fifo):
        for read_only in (False, True):
            with pytest.raises(StoreError, match="not a regular file"):
                async with Store.open(path, clock=clock, read_only=read_only):
                    pass
    assert not [t for t in threading.enumerate() if t.ident not in before]  # nothing connected


def test_a_failed_connect_leaves_no_thread_behind_its_loop() -> None:
    """aiosqlite ends a failed connect with a close it does not wait for; its thread then
    answered on the caller's loop, which a CLI command or a test may already have closed
    ("Event loop is closed", raised in that thread). `_connect` waits for the thread."""
    errors: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(30):
            with pytest.raises(sqlite3.OperationalError):
                asyncio.run(db_module._connect("file:/nonexistent/dir/x.db?mode=ro", uri=True))
        for thread in threading.enumerate():
            if "_connection_worker_thread" in thread.name:
                thread.join(10)
    finally:
        threading.excepthook = hook
    assert errors == []


async def test_a_read_is_one_turn_on_the_shared_read_connection(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads share one connection, and SQLite runs a statement started while another is open in
    # that one's read transaction. A read made of several turns on the connection's thread
    # (execute, fetch, close) let another read's turn fall in between, which then saw the
    # snapshot from before a commit it came after (a sync's closing recount, now and then).
    # The interleaving cannot be steered from outside, so this pins what prevents it: every
    # read is exactly one turn, start to finish. (The sync fault test caught the bug 1 run in
    # 20-30; a multi-turn read fails this every time.)
    conn = store._read_conn()
    turns: list[object] = []
    real = conn._execute

    async def counted(fn: object, *args: object, **kwargs: object) -> object:
        turns.append(fn)
        return await real(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(conn, "_execute", counted)
    for sql in ("SELECT 1", "SELECT name FROM sqlite_master", "SELECT * FROM events"):
        turns.clear()
        await store.fetchall(sql)
        assert len(turns) == 1, sql
    turns.clear()
    assert await store.fetchone("SELECT 2 AS two") is not None
    assert len(turns) == 1
