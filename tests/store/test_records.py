"""Record tables: upsert by hash, tombstones only after complete full runs, resurrection."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import Store, TombstoneResult, UpsertResult


def _rows(path: Path, table: str) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')}
    finally:
        conn.close()


async def test_insert_update_unchanged(store: Store, clock: FakeClock, db_path: Path) -> None:
    await store.ensure_record_table("clients")
    run1 = clock.now()
    page = [("1", {"name": "Ann", "n": 1}), ("2", {"name": "Bob"})]
    assert await store.upsert_page("clients", page, run_started_at=run1) == UpsertResult(2, 0, 0)
    before = _rows(db_path, "clients")
    assert before["1"]["first_seen_at"] == "2025-01-02T03:04:05.000000Z"

    clock.advance(60)
    run2 = clock.now()
    # Same content with keys in another order is unchanged; a real change is an update.
    page2 = [("1", {"n": 1, "name": "Ann"}), ("2", {"name": "Bobby"}), ("3", {"name": "Cy"})]
    assert await store.upsert_page("clients", page2, run_started_at=run2) == UpsertResult(1, 1, 1)
    after = _rows(db_path, "clients")
    assert after["1"]["updated_at"] == before["1"]["updated_at"]  # not rewritten
    assert after["1"]["data"] == before["1"]["data"]
    assert after["1"]["seen_at"] == "2025-01-02T03:05:05.000000Z"  # but seen
    assert after["2"]["updated_at"] == "2025-01-02T03:05:05.000000Z"
    assert after["2"]["first_seen_at"] == before["2"]["first_seen_at"]
    assert await store.get_record("clients", "2") == {"name": "Bobby"}


async def test_unicode_and_hash_is_canonical(store: Store) -> None:
    await store.ensure_record_table("t")
    now = store.clock.now()
    await store.upsert_page("t", [("é", {"name": "Zoë", "a": [1, 2]})], run_started_at=now)
    again = await store.upsert_page("t", [("é", {"a": [1, 2], "name": "Zoë"})], run_started_at=now)
    assert again.unchanged == 1
    assert await store.get_record("t", "é") == {"name": "Zoë", "a": [1, 2]}


async def _complete_run(
    store: Store, clock: FakeClock, table: str, ids: list[str], **kw: Any
) -> TombstoneResult:
    clock.advance(3600)
    started = clock.now()
    await store.upsert_page(table, [(i, {"v": i}) for i in ids], run_started_at=started)
    return await store.mark_tombstones(table, run_started_at=started, **kw)


async def test_tombstone_after_two_complete_runs_and_resurrect(
    store: Store, clock: FakeClock
) -> None:
    await store.ensure_record_table("clients")
    ids = [str(i) for i in range(1, 6)]
    assert await _complete_run(store, clock, "clients", ids) == TombstoneResult(live=5)
    # Missed once: marked, still served (offset paging may have shifted it out of view).
    assert await _complete_run(store, clock, "clients", ids[:-1]) == TombstoneResult(
        deleted=0, marked=1, missing=1, live=5
    )
    assert await store.get_record("clients", "5") == {"v": "5"}
    # Missed by the next complete run too: tombstoned.
    assert (await _complete_run(store, clock, "clients", ids[:-1])).deleted == 1
    assert await store.get_record("clients", "5") is None
    assert [rid async for rid, _ in store.iter_records("clients")] == ids[:-1]
    assert len([x async for x in store.iter_records("clients", include_deleted=True)]) == 5
    # Already tombstoned rows are not counted again.
    assert await _complete_run(store, clock, "clients", ids[:-1]) == TombstoneResult(live=4)
    # It comes back: resurrected.
    clock.advance(3600)
    res = await store.upsert_page("clients", [("5", {"v": "5"})], run_started_at=clock.now())
    assert res == UpsertResult(inserted=0, updated=1, unchanged=0)
    assert await store.get_record("clients", "5") == {"v": "5"}


async def test_a_row_seen_again_loses_its_mark(store: Store, clock: FakeClock) -> None:
    """A live row that one walk missed (rows shifted between pages) and the next saw is never
    tombstoned: the mark needs two misses in a row."""
    await store.ensure_record_table("t")
    ids = [str(i) for i in range(10)]
    await _complete_run(store, clock, "t", ids)
    assert (await _complete_run(store, clock, "t", ids[1:])).marked == 1
    await _complete_run(store, clock, "t", ids)
    assert (await _complete_run(store, clock, "t", ids[1:])).deleted == 0  # a first miss again
    assert await store.get_record("t", "0") is not None


async def test_tombstones_refused_past_the_fraction(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("t")
    ids = [str(i) for i in range(10)]
    await _complete_run(store, clock, "t", ids)
    for _ in range(2):
        refused = await _complete_run(store, clock, "t", ids[:4], max_fraction=0.5)
        assert refused == TombstoneResult(missing=6, live=10, refused=True)
    rows = await store.fetchall(
        'SELECT COUNT(*) AS n FROM "t" WHERE missed_at IS NOT NULL OR deleted_at IS NOT NULL'
    )
    assert rows[0]["n"] == 0  # refused means untouched: not even marked
    assert (await _complete_run(store, clock, "t", ids[:5], max_fraction=0.5)).marked == 5


async def test_failed_run_deletes_nothing(store: Store, clock: FakeClock, db_path: Path) -> None:
    await store.ensure_record_table("clients")
    run1 = clock.now()
    await store.upsert_page("clients", [(str(i), {"i": i}) for i in range(10)], run_started_at=run1)
    clock.advance(600)
    run2 = clock.now()
    run_id = await store.start_run("clients")
    await store.upsert_page("clients", [("0", {"i": 0})], run_started_at=run2)
    await store.finish_run(run_id, "failed", pages=1, fetched=1, unchanged=1, error="boom")
    # The caller does not call mark_tombstones after a failed run: nothing is deleted.
    assert all(r["deleted_at"] is None for r in _rows(db_path, "clients").values())


async def test_wall_clock_step_back_does_not_tombstone(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("t")
    run = clock.now()
    clock.set_wall(run.replace(year=2024))  # NTP stepped the clock back mid-run
    await store.upsert_page("t", [("1", {})], run_started_at=run)
    assert await store.mark_tombstones("t", run_started_at=run) == TombstoneResult(live=1)


async def test_report_tables_have_period(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("revenue", report=True)
    t = clock.now()
    await store.upsert_page(
        "revenue", [("2025-01:a", {"x": 1})], run_started_at=t, period="2025-01"
    )
    await store.upsert_page(
        "revenue", [("2025-02:a", {"x": 2})], run_started_at=t, period="2025-02"
    )
    clock.advance(10)
    t2 = clock.now()
    await store.upsert_page(
        "revenue", [("2025-02:a", {"x": 2})], run_started_at=t2, period="2025-02"
    )
    in_period = await store.mark_tombstones("revenue", run_started_at=t2, period="2025-02")
    assert in_period == TombstoneResult(live=1)
    whole = await store.mark_tombstones("revenue", run_started_at=t2)  # 2025-01 unseen
    assert (whole.marked, whole.deleted) == (1, 0)
    rows = await store.fetchall('SELECT id, period FROM "revenue" ORDER BY id')
    assert [(r["id"], r["period"]) for r in rows] == [
        ("2025-01:a", "2025-01"),
        ("2025-02:a", "2025-02"),
    ]
    with pytest.raises(StoreError, match="period"):
        await store.ensure_record_table("revenue")


async def test_period_on_plain_table_is_refused(store: Store) -> None:
    await store.ensure_record_table("t")
    with pytest.raises(StoreError, match="period"):
        await store.upsert_page("t", [("1", {})], run_started_at=store.clock.now(), period="x")


async def test_missing_table_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await store.upsert_page("nope", [("1", {})], run_started_at=store.clock.now())


async def test_insert_only_keeps_existing(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("cdrs")
    t = clock.now()
    await store.upsert_page("cdrs", [("1", {"v": 1})], run_started_at=t)
    res = await store.upsert_page(
        "cdrs", [("1", {"v": 99}), ("2", {"v": 2})], run_started_at=t, insert_only=True
    )
    assert res == UpsertResult(1, 0, 1)
    assert await store.get_record("cdrs", "1") == {"v": 1}


async def test_large_page_crosses_variable_limit(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("big")
    t = clock.now()
    page = [(f"{i:06d}", {"i": i}) for i in range(5000)]
    assert (await store.upsert_page("big", page, run_started_at=t)).inserted == 5000
    clock.advance(1)
    t2 = clock.now()
    page[7] = (page[7][0], {"i": -1})
    res = await store.upsert_page("big", page, run_started_at=t2)
    assert res == UpsertResult(0, 1, 4999)
    assert await store.mark_tombstones("big", run_started_at=t2) == TombstoneResult(live=5000)
    count = 0
    async for _ in store.iter_records("big", batch=700):
        count += 1
    assert count == 5000


async def test_duplicate_id_in_page_last_wins(store: Store) -> None:
    await store.ensure_record_table("t")
    res = await store.upsert_page(
        "t", [("1", {"v": 1}), ("1", {"v": 2})], run_started_at=store.clock.now()
    )
    assert res.inserted == 1
    assert await store.get_record("t", "1") == {"v": 2}


async def test_many_changed_rows_cross_statement_limits(store: Store, clock: FakeClock) -> None:
    """Changed rows are written as multi-row statements: every chunk boundary keeps its rows."""
    await store.ensure_record_table("big")
    page = [(f"{i:05d}", {"i": i}) for i in range(2500)]
    await store.upsert_page("big", page, run_started_at=clock.now())
    clock.advance(1)
    page2 = [
        (rid, {"i": -data["i"] - 1} if n % 3 == 0 else data) for n, (rid, data) in enumerate(page)
    ]
    res = await store.upsert_page("big", page2, run_started_at=clock.now())
    assert res == UpsertResult(0, 834, 1666)
    for n in (0, 3, 149, 150, 151, 897, 900, 2499):
        assert await store.get_record("big", f"{n:05d}") == dict(page2[n][1])


async def test_report_row_changed_in_its_period(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("revenue", report=True)
    first = await store.upsert_page(
        "revenue", [("2025-01:a", {"x": 1})], run_started_at=clock.now(), period="2025-01"
    )
    clock.advance(1)
    again = await store.upsert_page(
        "revenue", [("2025-01:a", {"x": 9})], run_started_at=clock.now(), period="2025-01"
    )
    assert (first, again) == (UpsertResult(1, 0, 0), UpsertResult(0, 1, 0))
    assert await store.get_record("revenue", "2025-01:a") == {"x": 9}
    rows = await store.fetchall('SELECT period FROM "revenue"')
    assert [r["period"] for r in rows] == ["2025-01"]


async def test_odd_ids_are_found_again(store: Store, clock: FakeClock) -> None:
    """Existing rows are looked up through one JSON row per chunk: any text id must survive
    the round trip, or an unchanged record would be inserted twice or counted as new."""
    ids = ['a"b', "back\\slash", "tab\there", "nul\x00byte", "ünï", "😀", "new\nline", " ", "1"]
    await store.ensure_record_table("odd")
    page = [(rid, {"id": rid}) for rid in ids]
    assert (await store.upsert_page("odd", page, run_started_at=clock.now())).inserted == 9
    clock.advance(1)
    res = await store.upsert_page("odd", page, run_started_at=clock.now())
    assert res == UpsertResult(0, 0, 9)


async def test_iter_records_in_sqlite_id_order_across_batches(
    store: Store, clock: FakeClock
) -> None:
    """Batches are read as one JSON row each and sorted here: the order, the batch edges and
    the values (large integers, floats, nested text) must be what a plain SELECT gives."""
    ids = ["b", "a", "ü", "Z", "😀", "a0", "10", "9", "é", "a\x00b", "中"]
    data = {"big": 2**70, "float": 1.5e300, "neg": -0.25, "text": 'q"\\\n', "list": [None, True]}
    await store.ensure_record_table("odd")
    page = [(rid, {**data, "id": rid}) for rid in ids]
    await store.upsert_page("odd", page, run_started_at=clock.now())
    got = [(rid, rec) async for rid, rec in store.iter_records("odd", batch=3)]
    assert [rid for rid, _ in got] == sorted(ids, key=lambda i: i.encode())
    assert all(rec == {**data, "id": rid} for rid, rec in got)


async def test_a_page_is_a_few_statements_not_one_per_row(store: Store, clock: FakeClock) -> None:
    """Each statement SQLite steps makes the writer thread give the GIL up and win it back
    from the event loop; a page must cost a handful of statements whatever its size (a
    1,000-row executemany beside a busy loop took seconds). Counted with SQLite's own trace of
    every statement it runs, `executemany`'s per-row runs included."""
    from daemon.store.handoff import on_thread

    traced: list[str] = []
    assert store._writer is not None

    def trace(raw: sqlite3.Connection) -> None:
        raw.set_trace_callback(traced.append)

    await on_thread(store._writer, trace)
    await store.ensure_record_table("big")
    page = [(f"{i:05d}", {"i": i}) for i in range(1000)]
    traced.clear()
    assert (await store.upsert_page("big", page, run_started_at=clock.now())).inserted == 1000
    inserted = len(traced)
    clock.advance(1)
    half = [(rid, {"i": -1 - data["i"]} if n % 2 else data) for n, (rid, data) in enumerate(page)]
    traced.clear()
    result = await store.upsert_page("big", half, run_started_at=clock.now())
    assert result == UpsertResult(0, 500, 500)
    # 11 and 8 today (BEGIN, look-ups, multi-row writes, COMMIT); row by row would be 1,000+
    assert inserted <= 15 and len(traced) <= 15, (inserted, len(traced))


async def test_iter_records_cuts_batches_of_large_records_short(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is bounded by its JSON size as well as its count, so large records never build
    one huge string; a record larger than the bound comes alone; nothing is skipped."""
    from daemon.store import records

    monkeypatch.setattr(records, "BATCH_CHARS", 1000)
    await store.ensure_record_table("fat")
    sizes = [10, 600, 600, 5000, 20, 20, 999, 1]
    page = [(f"r{n:02d}", {"pad": "x" * size}) for n, size in enumerate(sizes)]
    await store.upsert_page("fat", page, run_started_at=clock.now())
    reads: list[tuple[object, ...]] = []
    fetchone = store.fetchone

    async def counted(sql: str, params: tuple[object, ...] = ()) -> object:
        reads.append(tuple(params))
        return await fetchone(sql, params)

    monkeypatch.setattr(store, "fetchone", counted)
    got = [(rid, rec) async for rid, rec in store.iter_records("fat", batch=5)]
    assert got == [(rid, dict(data)) for rid, data in page]
    # batches: r00-r01 (r02 would pass 1000), r02, r03 alone, r04-r05, then r06, r07
    row_reads = [p for p in reads if len(p) == 2 and isinstance(p[1], str)]
    assert [p[1] for p in row_reads] == ["r01", "r02", "r03", "r05", "r06", "r07"]


async def test_an_id_holding_a_lone_surrogate_is_kept_with_u_fffd(
    store: Store, clock: FakeClock
) -> None:
    """Found by a hostile-upstream probe: sqlite3 cannot bind such an id (UnicodeEncodeError,
    untyped), so the page failed on every run and took its other records with it. The id is
    kept with U+FFFD, as record data is (`daemon.canonical`)."""
    await store.ensure_record_table("sur")
    page = [("1", {"a": 1}), ("s\ud800", {"a": 2})]
    assert (await store.upsert_page("sur", page, run_started_at=clock.now())).inserted == 2
    clock.advance(1)
    assert await store.upsert_page("sur", page, run_started_at=clock.now()) == UpsertResult(0, 0, 2)
    assert [rid async for rid, _ in store.iter_records("sur")] == ["1", "s\ufffd"]
    assert await store.get_record("sur", "s\ud800") == {"a": 2}
    assert await store.get_record("sur", "s\ufffd") == {"a": 2}
