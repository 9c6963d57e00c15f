"""Opening, migrations, pragmas, identifiers, read-only mode."""

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import SCHEMA_VERSION, Store, validate_table_name
from daemon.store.util import from_db, to_db

TABLES = {
    "sync_runs",
    "sync_state",
    "contacts",
    "events",
    "actions",
    "halo_threads",
    "subscriptions",
}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_migrates_from_empty(db_path: Path, clock: FakeClock) -> None:
    with capture_logs() as logs:
        async with Store.open(db_path, clock=clock) as store:
            assert store.stats.commits == 0
    assert TABLES <= _tables(db_path)
    assert _user_version(db_path) == SCHEMA_VERSION
    migrated = [e for e in logs if e["event"] == "store.migrated"]
    assert migrated and migrated[0]["from_version"] == 0
    assert migrated[0]["to_version"] == SCHEMA_VERSION


async def test_failed_migration_leaves_the_file_as_it_was(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All pending steps share one transaction: a step that fails takes the earlier ones (and
    the version bump) with it, and a later start retries from the same version."""
    from daemon.store import schema

    broken = (*schema.MIGRATIONS, ("CREATE TABLE later (a TEXT)", "NOT SQL AT ALL"))
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(broken))
    with pytest.raises(StoreError, match="cannot open database"):
        async with Store.open(db_path, clock=clock):
            pass
    assert _user_version(db_path) == 0
    assert not _tables(db_path)
    monkeypatch.undo()
    async with Store.open(db_path, clock=clock):
        pass
    assert _user_version(db_path) == SCHEMA_VERSION
    assert TABLES <= _tables(db_path)


async def test_sqlite_without_json_functions_is_refused_clearly(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe is run for real; a function this SQLite lacks stands in for missing JSON."""
    from daemon.store import db

    monkeypatch.setattr(db, "JSON_PROBE", "SELECT json_group_array_missing(1)")
    with pytest.raises(StoreError, match="without its JSON functions"):
        async with Store.open(db_path, clock=clock):
            pass


async def test_reopen_is_idempotent(db_path: Path, clock: FakeClock) -> None:
    async with Store.open(db_path, clock=clock) as store:
        await store.start_run("job")
    with capture_logs() as logs:
        async with Store.open(db_path, clock=clock) as store:
            assert len(await store.last_runs()) == 1
    assert _user_version(db_path) == SCHEMA_VERSION
    assert not [e for e in logs if e["event"] == "store.migrated"]


async def test_pragmas(store: Store) -> None:
    row = await store.fetchone("PRAGMA journal_mode")
    assert row is not None and row[0] == "wal"
    row = await store.fetchone("PRAGMA foreign_keys")
    assert row is not None and row[0] == 1
    row = await store.fetchone("PRAGMA busy_timeout")
    assert row is not None and row[0] == 5000


async def test_writer_keeps_statement_journals_in_memory(store: Store) -> None:
    """A multi-row INSERT into `events` needs a statement journal (a constraint may abort it
    half-way); at the default temp_store it spilled to a temp file past 64 KiB, one create,
    write and unlink per webhook group."""

    async def temp_store(conn: Any) -> Any:
        return list(await conn.execute_fetchall("PRAGMA temp_store"))

    rows = await store.write(temp_store, transactional=False)
    assert rows[0][0] == 2  # MEMORY


async def test_newer_schema_is_refused(db_path: Path, clock: FakeClock) -> None:
    async with Store.open(db_path, clock=clock):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for read_only in (False, True):  # the service and the inspection commands say the same
        with pytest.raises(StoreError, match=r"newer version of the daemon.*upgrade the daemon"):
            async with Store.open(db_path, clock=clock, read_only=read_only):
                pass


@pytest.mark.parametrize(
    "name",
    ["x; drop table", "X", "1abc", "", "a" * 64, "sqlite_x", "events", "select", "a-b", 'a"b'],
)
def test_identifier_validation_rejects(name: str) -> None:
    with pytest.raises(StoreError):
        validate_table_name(name)


@pytest.mark.parametrize("name", ["blesta_clients", "a", "halo_tickets_2", "a" * 63])
def test_identifier_validation_accepts(name: str) -> None:
    assert validate_table_name(name) == name


@pytest.mark.parametrize("name", ["x; drop table events", "sqlite_master", "contacts", "order"])
async def test_ensure_record_table_rejects_before_sql(store: Store, name: str) -> None:
    with pytest.raises(StoreError):
        await store.ensure_record_table(name)
    with pytest.raises(StoreError):
        await store.upsert_page(name, [("1", {})], run_started_at=store.clock.now())
    assert store.stats.jobs == 0


async def test_read_only_store(db_path: Path, clock: FakeClock) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        async with Store.open(db_path, clock=clock, read_only=True):
            pass
    assert not db_path.exists()
    async with Store.open(db_path, clock=clock) as store:
        await store.start_run("job")
    async with Store.open(db_path, clock=clock, read_only=True) as ro:
        assert [r.job for r in await ro.last_runs()] == ["job"]
        with pytest.raises(StoreError, match="read-only"):
            await ro.start_run("other")


async def test_close_twice_and_write_after_close(db_path: Path, clock: FakeClock) -> None:
    store = await Store.connect(db_path, clock=clock)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.start_run("job")


@pytest.mark.parametrize(
    "when",
    [
        datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        datetime(5, 1, 2, tzinfo=UTC),  # the year is padded
        datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 1, 2, 3, 4, 5, tzinfo=ZoneInfo("Europe/Berlin")),
    ],
)
def test_stored_times_are_one_fixed_width_utc_form(when: datetime) -> None:
    """`to_db`'s UTC fast path and its conversion give the same text, and it reads back."""
    text = to_db(when)
    expected = when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert text == expected and len(text) == 27
    assert from_db(text) == when
