"""The claim's walk (`inbox._claim`) against the rule it implements, written out plainly.

The rule (DESIGN §4, issue 16): an event may be claimed when it is unfinished (pending or
failed), due, unleased, not excluded, and no earlier unfinished event has the same sender;
oldest first, at most `limit`. The walk reads the unfinished events a page at a time; these
tests drive it with pages of every size, so a sender's queue spanning pages is covered.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store import inbox
from tests.store.schemas import schema_at

NOW = "2026-01-01T12:00:00.000000+00:00"
BEFORE = "2026-01-01T11:59:00.000000+00:00"
AFTER = "2026-01-01T12:01:00.000000+00:00"
UNTIL = "2026-01-01T12:05:00.000000+00:00"


@dataclass(frozen=True)
class Row:
    sender: str | None
    status: str
    next_attempt_at: str | None
    lease_until: str | None


@contextlib.contextmanager
def database() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema_at(conn)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def raw() -> Iterator[sqlite3.Connection]:
    with database() as conn:
        yield conn


def load(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.execute("DELETE FROM events")
    conn.executemany(
        "INSERT INTO events (id, source, kind, dedupe_key, received_at, payload, sender, status,"
        " next_attempt_at, lease_until) VALUES (?, 'netsapiens', 'message.received', ?, ?, '{}',"
        " ?, ?, ?, ?)",
        [
            (i, f"k{i}", NOW, r.sender, r.status, r.next_attempt_at, r.lease_until)
            for i, r in enumerate(rows, start=1)
        ],
    )


def by_the_rule(rows: list[Row], exclude: frozenset[int], limit: int) -> list[int]:
    """Claimable: unfinished, not in hand (`exclude`), due, unleased, and — for an event with a
    sender — neither an earlier unfinished event of that sender nor one of theirs in hand (a
    replayed earlier event waits for it)."""
    unfinished = {i for i, r in enumerate(rows, start=1) if r.status in ("pending", "failed")}
    in_hand = {rows[j - 1].sender for j in exclude if j <= len(rows)}
    out = []
    for i, r in enumerate(rows, start=1):
        earlier = any(rows[j - 1].sender == r.sender for j in unfinished if j < i)
        if (
            i in unfinished
            and i not in exclude
            and (r.next_attempt_at is None or r.next_attempt_at <= NOW)
            and (r.lease_until is None or r.lease_until <= NOW)
            and (r.sender is None or not (earlier or r.sender in in_hand))
        ):
            out.append(i)
    return out[:limit]


def claimed(
    conn: sqlite3.Connection, exclude: frozenset[int], limit: int, page: int = inbox.WALK_PAGE
) -> list[int]:
    return sorted(int(r[0]) for r in inbox._claim(conn, NOW, UNTIL, exclude, limit, page))


rows_strategy = st.lists(
    st.builds(
        Row,
        sender=st.sampled_from([None, "+15550000001", "+15550000002", "+15550000003"]),
        status=st.sampled_from(["pending", "failed", "done", "dead", "ignored"]),
        next_attempt_at=st.sampled_from([None, BEFORE, NOW, AFTER]),
        lease_until=st.sampled_from([None, BEFORE, NOW, AFTER]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=rows_strategy,
    exclude=st.frozensets(st.integers(1, 30), max_size=5),
    limit=st.integers(1, 8),
    page=st.integers(1, 40),
)
def test_the_walk_claims_what_the_rule_allows(
    rows: list[Row], exclude: frozenset[int], limit: int, page: int
) -> None:
    with database() as raw:
        load(raw, rows)
        expected = by_the_rule(rows, exclude, limit)
        assert claimed(raw, exclude, limit, page) == expected
        leases = dict(raw.execute("SELECT id, lease_until FROM events").fetchall())
    # What was claimed is leased until UNTIL; nothing else was touched.
    for i, r in enumerate(rows, start=1):
        assert leases[i] == (UNTIL if i in expected else r.lease_until)


def test_a_long_queue_of_one_sender_does_not_hide_the_next_sender(
    raw: sqlite3.Connection,
) -> None:
    """Its first event in flight, the sender's other 25 span several pages; the walk reads
    through them to the other sender's event behind."""
    a, b = "+15550000001", "+15550000002"
    rows = [Row(a, "pending", None, AFTER)] + [Row(a, "pending", None, None)] * 25
    load(raw, [*rows, Row(b, "pending", None, None)])
    assert claimed(raw, frozenset(), 5, page=4) == [27]
    assert claimed(raw, frozenset(), 5, page=4) == []  # 27 leased; 1 still blocks the rest


def test_pages_grow_through_a_long_queue(raw: sqlite3.Connection) -> None:
    """From a first page sized to the request to WALK_PAGE, doubling: 1,200 events of a sender
    whose first is in flight, then another sender's."""
    a, b = "+15550000001", "+15550000002"
    rows = [Row(a, "pending", None, AFTER)] + [Row(a, "pending", None, None)] * 1199
    load(raw, [*rows, Row(b, "pending", None, None)])
    walked: list[str] = []
    raw.set_trace_callback(walked.append)
    assert claimed(raw, frozenset(), 1) == [1201]
    raw.set_trace_callback(None)
    limits = [int(s.rsplit("LIMIT ", 1)[1].split(")")[0]) for s in walked if "json_group" in s]
    assert limits == [16, 32, 64, 128, 256, 500, 500]  # 1,496 >= 1,201: the last is short


def test_an_excluded_event_still_holds_its_senders_queue(raw: sqlite3.Connection) -> None:
    """The dispatcher excludes what it is still handling, whatever its lease says: the next
    event of that sender must wait for it too."""
    a = "+15550000001"
    load(raw, [Row(a, "pending", None, None), Row(a, "pending", None, None)])
    assert claimed(raw, frozenset({1}), 5) == []
    assert claimed(raw, frozenset(), 5) == [1]


def test_a_page_in_any_order_is_walked_in_id_order(raw: sqlite3.Connection) -> None:
    """SQLite before 3.44 does not promise the order inside `json_group_array`; nothing here
    can make this one reorder, so a wrapper hands the walk each page reversed."""
    a = "+15550000001"
    load(raw, [Row(a, "pending", None, None), Row(a, "pending", None, None)] * 20)

    class Reversing:
        def execute(self, sql: str, params: Any) -> Any:
            cursor = raw.execute(sql, params)
            if not sql.startswith("SELECT count(*), json_group_array"):
                return cursor
            count, page = cursor.fetchone()
            rows = list(reversed(json.loads(page))) if count else []
            return raw.execute("SELECT ?, ?", (count, json.dumps(rows)))

    got = inbox._claim(Reversing(), NOW, UNTIL, frozenset(), 5, 4)  # type: ignore[arg-type]
    assert [int(r[0]) for r in got] == [1]  # the sender's first, not the last of a page


def test_a_replayed_earlier_event_waits_for_its_senders_event_in_hand(
    raw: sqlite3.Connection,
) -> None:
    """Found by probing: event 1 of a sender was dead, event 2 was being handled, and event 1,
    replayed meanwhile, was claimed beside it (a second ticket instead of a note)."""
    ann, bob = "+15550000001", "+15550000002"
    load(
        raw,
        [
            Row(ann, "pending", None, None),  # 1: replayed, pending again
            Row(ann, "pending", None, UNTIL),  # 2: in hand
            Row(bob, "pending", None, None),  # 3: another sender's, free to go
        ],
    )
    assert claimed(raw, frozenset({2}), limit=5) == [3]
    raw.execute("UPDATE events SET status = 'done', lease_until = NULL WHERE id = 2")
    assert claimed(raw, frozenset(), limit=5) == [1]  # once it is done
