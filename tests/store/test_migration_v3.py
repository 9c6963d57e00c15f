"""Migration 3 (issue 16) on a populated version-2 database: data kept, new columns defaulted,
an old claim's lease freed, the indexes the claim and the guard rely on in place."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.store import ContactEntry, Store
from daemon.store.schema import SCHEMA_VERSION
from tests.store.schemas import schema_at

TS = "2025-01-02T03:04:05.000000Z"
LATER = "2025-01-02T04:00:00.000000Z"


def make_v2(path: Path) -> None:
    """The layout a version-2 daemon left, with a little of everything in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        schema_at(conn, 2)
        events = [
            # (dedupe_key, status, attempts, next_attempt_at, last_error)
            ("pending-leased", "pending", 1, LATER, None),  # claimed by the old claim
            ("pending-free", "pending", 0, None, None),
            ("failed-later", "failed", 2, LATER, "timeout"),
            ("done", "done", 1, None, None),
        ]
        conn.executemany(
            "INSERT INTO events (source, kind, dedupe_key, received_at, payload, status, "
            "attempts, next_attempt_at, last_error) VALUES ('netsapiens', 'message.received', "
            "?, ?, '{}', ?, ?, ?, ?)",
            [(k, TS, s, a, n, e) for k, s, a, n, e in events],
        )
        conn.execute(
            "INSERT INTO actions (event_id, rule, kind, idempotency_key, status, attempts, "
            "request, created_at, done_at, upstream_ref) VALUES (4, 'balance', 'sms_reply', "
            "'done:balance', 'sent', 1, '{}', ?, ?, 'm1')",
            (TS, TS),
        )
        conn.execute(
            "INSERT INTO halo_threads (phone, rule, ticket_id, updated_at) "
            "VALUES ('+15551230000', 'sms-to-ticket', '77', ?)",
            (TS,),
        )
        conn.execute(
            "INSERT INTO contacts (phone, table_name, record_id, name) "
            "VALUES ('+15551230000', 'clients', '7', 'Ann')"
        )
        conn.execute(
            "INSERT INTO sync_runs (job, started_at, status, owner) VALUES ('j', ?, 'ok', 'h:1:1')",
            (TS,),
        )
    finally:
        conn.close()


def names(path: Path, kind: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,)).fetchall()
    return {r[0] for r in rows}


async def test_v2_to_v3_keeps_data_and_defaults_new_columns(
    db_path: Path, clock: FakeClock
) -> None:
    make_v2(db_path)
    async with Store.open(db_path, clock=clock) as store:
        events = {e.dedupe_key: e for e in await store.list_events()}
        assert len(events) == 4
        for ev in events.values():
            assert ev.via == "webhook" and ev.sender is None and ev.plan is None
            assert ev.lease_until is None and ev.body_hash is None and ev.occurred_at is None
        # The old claim kept its lease in next_attempt_at; after the upgrade it is free, and
        # a failed event keeps its retry time and its attempts.
        assert events["pending-leased"].next_attempt_at is None
        assert events["pending-leased"].attempts == 1
        failed = events["failed-later"]
        assert failed.next_attempt_at is not None and failed.attempts == 2
        assert failed.last_error == "timeout"
        claimed = await store.claim_events(10, clock.now(), lease=timedelta(minutes=1))
        assert [e.dedupe_key for e in claimed] == ["pending-leased", "pending-free"]

        [action] = await store.actions_for_event(events["done"].id)
        assert action.status == "sent" and action.upstream_ref == "m1"
        assert action.phone is None and action.auto_reply is False
        assert action.attempt_started_at is None
        thread = await store.get_halo_thread("+15551230000", "sms-to-ticket")
        assert thread is not None and thread.ticket_id == "77" and thread.notes == 0
        assert await store.own_numbers() == set()
        assert await store.get_guard_state("breaker") is None
        assert [r.job for r in await store.last_runs()] == ["j"]

    assert {"own_numbers", "guard_state"} <= names(db_path, "table")
    indexes = names(db_path, "index")
    assert {
        "events_open", "actions_phone_rule", "actions_conversation", "actions_auto_reply",
        "contacts_gen",
    } <= indexes  # fmt: skip
    assert not {"events_due", "contacts_table"} & indexes  # replaced
    assert "events_sender" not in indexes  # made by 3, dropped by 5: the claim walks instead
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        gen = conn.execute("SELECT gen FROM contacts").fetchall()
        assert gen == [(0,)]
        # The new CHECK holds for rows written after the upgrade.
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(
                "INSERT INTO events (source, kind, dedupe_key, received_at, payload, via) "
                "VALUES ('x', 'y', 'z', ?, '{}', 'carrier-pigeon')",
                (TS,),
            )


async def test_contacts_of_v2_are_replaced_by_the_first_rebuild(
    db_path: Path, clock: FakeClock
) -> None:
    make_v2(db_path)
    async with Store.open(db_path, clock=clock) as store:
        assert await store.replace_contacts("clients", [ContactEntry("+15559990000", "8")]) == 1
        rows = await store.fetchall("SELECT phone, gen FROM contacts ORDER BY phone")
        assert [(r["phone"], r["gen"]) for r in rows] == [("+15559990000", 1)]
