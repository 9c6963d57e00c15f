"""Webhook ingest into the inbox: many callers' events in one statement, on the writer thread.

`InboxRepo.insert_events` hands each caller's rows to the writer as a batch item; the writer
merges every caller queued together into one call of `insert_batch` inside one transaction,
so 64 concurrent deliveries cost one INSERT and one COMMIT. Rows go in as bound parameters of
a multi-row VALUES; a group whose keys are all new is a plain INSERT (`_insert_new` says why),
one with stored or repeated keys an `INSERT ... ON CONFLICT DO NOTHING RETURNING`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

from daemon.crashpoints import crashpoint
from daemon.errors import StoreError
from daemon.store.util import rows_where_in, to_db, value_marks

__all__ = ["EVENT_VIA", "InsertedEvent", "NewEvent", "insert_batch", "to_row"]

EVENT_VIA = ("webhook", "backfill")
STATEMENT_BYTES = 4 * 1024 * 1024  # payload bytes per INSERT statement, at most (roughly)


class NewEvent(NamedTuple):
    """An event for the inbox. A NamedTuple rather than a frozen dataclass: as immutable, and
    built once per webhook event at a third of the cost (a frozen dataclass sets each field
    through `object.__setattr__`)."""

    source: str
    kind: str
    dedupe_key: str
    payload: str
    received_at: datetime
    sender: str | None = None  # E.164 of who sent it: one sender's events are handled in order
    via: str = "webhook"  # or "backfill" (pulled through the API after a gap: never auto-replied)
    occurred_at: datetime | None = None  # when it happened at the PBX, if it said
    body_hash: str | None = None  # of the normalised message text (repeat and echo detection)


class InsertedEvent(NamedTuple):
    """What the inbox did with one event (one per event, on the writer thread: a NamedTuple
    for the same reason as `NewEvent`)."""

    id: int
    dedupe_key: str
    duplicate: bool


_Row = tuple[str, str, str, str, str, str | None, str, str | None, str | None]
_FIELDS = ("source", "kind", "dedupe_key", "received_at", "payload", "sender", "via",
           "occurred_at", "body_hash")  # fmt: skip
# Rows go in as bound parameters, a multi-row VALUES of up to ROWS_PER_STATEMENT rows (well
# under SQLite's host-parameter limit, 999 in old builds): no JSON to encode on our side or to
# take apart with json_extract on SQLite's. Ids follow the order of the rows, hence the queue.
ROWS_PER_STATEMENT = 100
_INSERT_HEAD = f"INSERT INTO events ({', '.join(_FIELDS)}) VALUES "
_RETURNING = " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"


@functools.cache
def _insert_sql(rows: int, returning: bool = True) -> str:
    return _INSERT_HEAD + value_marks(len(_FIELDS), rows) + (_RETURNING if returning else "")


# Both ends of a plain INSERT's rows, checked in one step (see `_insert_new`).
_ENDS = (
    "SELECT (SELECT dedupe_key FROM events WHERE id = ?) IS ?"
    " AND (SELECT dedupe_key FROM events WHERE id = ?) IS ?"
)


def to_row(e: NewEvent) -> _Row:
    if e.via not in EVENT_VIA:
        raise StoreError(f"unknown event origin via={e.via!r}: expected webhook or backfill")
    if not isinstance(e.payload, str):
        raise StoreError("event payload must be JSON text")
    occurred = None if e.occurred_at is None else to_db(e.occurred_at)
    return (e.source, e.kind, e.dedupe_key, to_db(e.received_at), e.payload, e.sender, e.via,
            occurred, e.body_hash)  # fmt: skip


def _parts(rows: Sequence[_Row]) -> Iterator[Sequence[_Row]]:
    """Usually one part; more than ROWS_PER_STATEMENT rows, or a burst of large payloads, is
    split so that no statement carries more than STATEMENT_BYTES of payload."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        size += len(row[4])
        if i > start and (size > STATEMENT_BYTES or i - start >= ROWS_PER_STATEMENT):
            yield rows[start:i]
            start, size = i, len(row[4])
    yield rows[start:]


def _insert_new(conn: sqlite3.Connection, part: Sequence[_Row]) -> dict[str, int] | None:
    """The common case — every key of `part` is new — in two single-step statements; None
    (nothing written) when some key is already stored or repeated, for `_insert_returning`.

    Why: each row a statement returns is one `sqlite3_step`, and the sqlite3 module releases and
    retakes the GIL around every step. On the writer thread, each retake waits for the busy
    event loop to let go of the GIL, so `INSERT ... RETURNING` paid that wait once per row of
    the group. A plain INSERT is one step; the ids then follow from SQLite's rowid rule (a new
    row of an INTEGER PRIMARY KEY table gets the largest rowid plus one, rows of one statement
    in order: sqlite.org/autoinc.html), confirmed at both ends, with a look-up by key should
    that ever not hold. A stored key makes the INSERT fail on the UNIQUE index, and SQLite
    undoes that statement alone (the group's transaction goes on): cheaper than asking first,
    since a redelivery is the exception.
    """
    keys = [row[2] for row in part]
    if len(set(keys)) != len(keys):
        return None
    try:
        cursor = conn.execute(_insert_sql(len(part), returning=False), [v for r in part for v in r])
    except sqlite3.IntegrityError:
        # A stored key, or a row the table refuses: `_insert_returning` tells them apart (it
        # skips the first and raises for the second).
        return None
    # rowcount is this statement's own rows (sqlite3_changes), not a trigger's.
    if cursor.rowcount != len(part) or cursor.lastrowid is None:
        raise StoreError("events insert wrote fewer rows than it was given")
    last = cursor.lastrowid
    first = last - len(part) + 1
    if conn.execute(_ENDS, (first, keys[0], last, keys[-1])).fetchone()[0] == 1:
        return {key: first + i for i, key in enumerate(keys)}
    return _stored(conn, keys)


def _stored(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, int]:
    """The ids of those of `keys` already stored. (Through `json_each`, a redelivered key
    holding a NUL was not found and the delivery got a 500: the listener fuzz test found it.)"""
    found = rows_where_in(conn, "events", "dedupe_key", keys, "id, dedupe_key")
    return {str(key): int(event_id) for event_id, key in found}


def _insert_returning(conn: sqlite3.Connection, part: Sequence[_Row]) -> dict[str, int]:
    """Insert what is new in `part`; the keys created, with their ids."""
    values = [value for row in part for value in row]
    found = conn.execute(_insert_sql(len(part)), values).fetchall()
    return {str(key): int(new_id) for new_id, key in found}


def insert_batch(
    conn: sqlite3.Connection, requests: Sequence[Sequence[_Row]]
) -> list[list[InsertedEvent]]:
    """The writer's batch function: every queued request's events in one INSERT (run on the
    writer thread, inside the group's transaction).

    A key seen twice (in one request or across requests of the batch) is new the first time and
    a duplicate after; a key already stored is a duplicate everywhere.
    """
    rows = [row for request in requests for row in request]
    created: dict[str, int] = {}
    for part in _parts(rows):
        new = _insert_new(conn, part)
        created.update(new if new is not None else _insert_returning(conn, part))
    missing = sorted({row[2] for row in rows} - created.keys())
    stored: dict[str, int] = {}
    if missing:
        stored = _stored(conn, missing)
    claimed: set[str] = set()
    out: list[list[InsertedEvent]] = []
    for request in requests:
        results: list[InsertedEvent] = []
        for row in request:
            key = row[2]
            if key in created and key not in claimed:
                claimed.add(key)
                results.append(InsertedEvent(created[key], key, duplicate=False))
            else:
                results.append(InsertedEvent(created.get(key) or stored[key], key, True))
        out.append(results)
    crashpoint("before_commit")
    return out
