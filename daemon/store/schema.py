"""Schema migrations, ordered and driven by `PRAGMA user_version`.

Why `user_version` rather than a `schema_version` table: it lives in the database header, so
it is read without a query plan and changes atomically with the DDL of the same transaction.
The pending steps run in one `BEGIN IMMEDIATE` transaction together with the version bump, so
a crash mid-migration leaves the previous version intact and the steps are simply retried.

Record tables (one per sync job) are not created here: they appear on demand through
`Store.ensure_record_table`, because their names come from the configuration. A future step
that must change every record table would enumerate them from `sqlite_master`.

Never edit a released step; append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite
import structlog

from daemon.store.handoff import on_thread

log = structlog.get_logger(__name__)

MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: the initial layout of DESIGN §4.
    (
        """
        CREATE TABLE sync_runs (
            id          INTEGER PRIMARY KEY,
            job         TEXT NOT NULL,
            started_at  TEXT NOT NULL,
            finished_at TEXT,
            status      TEXT NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'ok', 'failed', 'cancelled')),
            pages       INTEGER NOT NULL DEFAULT 0,
            fetched     INTEGER NOT NULL DEFAULT 0,
            inserted    INTEGER NOT NULL DEFAULT 0,
            updated     INTEGER NOT NULL DEFAULT 0,
            unchanged   INTEGER NOT NULL DEFAULT 0,
            deleted     INTEGER NOT NULL DEFAULT 0,
            error       TEXT
        )
        """,
        "CREATE INDEX sync_runs_job ON sync_runs (job, id)",
        "CREATE INDEX sync_runs_status ON sync_runs (status)",
        """
        CREATE TABLE sync_state (
            job             TEXT PRIMARY KEY,
            cursor          TEXT,
            last_success_at TEXT,
            last_run_at     TEXT
        )
        """,
        """
        CREATE TABLE contacts (
            phone      TEXT NOT NULL,
            table_name TEXT NOT NULL,
            record_id  TEXT NOT NULL,
            name       TEXT,
            PRIMARY KEY (phone, table_name, record_id)
        )
        """,
        "CREATE INDEX contacts_table ON contacts (table_name)",
        """
        CREATE TABLE events (
            id              INTEGER PRIMARY KEY,
            source          TEXT NOT NULL,
            kind            TEXT NOT NULL,
            dedupe_key      TEXT NOT NULL UNIQUE,
            received_at     TEXT NOT NULL,
            payload         TEXT NOT NULL,
            status          TEXT NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'done', 'ignored', 'failed', 'dead')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error      TEXT
        )
        """,
        "CREATE INDEX events_due ON events (status, next_attempt_at)",
        "CREATE INDEX events_source_kind ON events (source, kind, received_at)",
        """
        CREATE TABLE actions (
            id              INTEGER PRIMARY KEY,
            event_id        INTEGER REFERENCES events (id),
            rule            TEXT NOT NULL,
            kind            TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE,
            status          TEXT NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            request         TEXT,
            response        TEXT,
            created_at      TEXT NOT NULL,
            done_at         TEXT,
            upstream_ref    TEXT,
            next_attempt_at TEXT,
            last_error      TEXT
        )
        """,
        "CREATE INDEX actions_status ON actions (status, next_attempt_at)",
        "CREATE INDEX actions_event ON actions (event_id)",
        "CREATE INDEX actions_rule_created ON actions (rule, created_at)",
        """
        CREATE TABLE halo_threads (
            phone      TEXT NOT NULL,
            rule       TEXT NOT NULL,
            ticket_id  TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (phone, rule)
        )
        """,
        """
        CREATE TABLE subscriptions (
            id         TEXT PRIMARY KEY,
            model      TEXT NOT NULL,
            post_url   TEXT NOT NULL,
            expires_at TEXT,
            status     TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
    ),
    # 2: which process runs a sync (so any command can tell a crashed run from a live one), and
    # why a full run could not vouch for completeness (it then tombstoned nothing).
    (
        "ALTER TABLE sync_runs ADD COLUMN owner TEXT",
        "ALTER TABLE sync_runs ADD COLUMN incomplete TEXT",
    ),
    # 3: events out (issue 16). Who sent an event and how it came in (one sender's events are
    # handled in order; backfilled ones are never auto-replied), claims as leases apart from
    # the retry schedule, the stored plan; what the loop guard asks of actions; a generation
    # per contacts row, so an index is rebuilt in short transactions; our sending numbers and
    # the guard's breaker.
    (
        "ALTER TABLE events ADD COLUMN sender TEXT",
        "ALTER TABLE events ADD COLUMN via TEXT NOT NULL DEFAULT 'webhook' "
        "CHECK (via IN ('webhook', 'backfill'))",
        "ALTER TABLE events ADD COLUMN occurred_at TEXT",
        "ALTER TABLE events ADD COLUMN body_hash TEXT",
        "ALTER TABLE events ADD COLUMN lease_until TEXT",
        "ALTER TABLE events ADD COLUMN plan TEXT",
        "CREATE INDEX events_sender ON events (sender, status, id)",
        # The claim walks unfinished events in id order; this index holds only those, so
        # neither a long history nor a backlog makes it sort. It replaces events_due.
        "CREATE INDEX events_open ON events (id) WHERE status IN ('pending', 'failed')",
        "DROP INDEX events_due",
        # A lease taken by the old claim lived in next_attempt_at; it is free now.
        "UPDATE events SET next_attempt_at = NULL WHERE status = 'pending'",
        "ALTER TABLE actions ADD COLUMN phone TEXT",
        "ALTER TABLE actions ADD COLUMN conversation TEXT",
        "ALTER TABLE actions ADD COLUMN body_hash TEXT",
        "ALTER TABLE actions ADD COLUMN attempt_started_at TEXT",
        "ALTER TABLE actions ADD COLUMN auto_reply INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX actions_phone_rule ON actions (phone, rule, created_at)",
        "CREATE INDEX actions_conversation ON actions (conversation, created_at)",
        "CREATE INDEX actions_auto_reply ON actions (auto_reply, created_at)",
        "ALTER TABLE halo_threads ADD COLUMN notes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE contacts ADD COLUMN gen INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX contacts_gen ON contacts (table_name, gen)",
        "DROP INDEX contacts_table",
        """
        CREATE TABLE own_numbers (
            phone         TEXT PRIMARY KEY,
            first_used_at TEXT NOT NULL,
            last_used_at  TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE guard_state (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
    ),
    # 4: a subscription's post URL is kept masked. Its last path segment is the webhook secret
    # (`<public_url>/<model>/<secret>`), which the database must not hold; only display reads
    # the column (the keeper compares the PBX's own list with the URL it builds from the
    # config). `rtrim(x, replace(x, '/', ''))` is x up to its last '/'. secure_delete zeroes
    # the old text in the page instead of leaving it in free space.
    (
        "PRAGMA secure_delete = ON",
        "UPDATE subscriptions SET post_url = "
        "rtrim(post_url, replace(post_url, '/', '')) || '[REDACTED]' "
        "WHERE post_url NOT LIKE '%/[REDACTED]'",
        "PRAGMA secure_delete = OFF",
    ),
    # 5: the claim finds each sender's first unfinished event by walking the unfinished
    # events in id order (`inbox._claim`), which it did anyway; the index on (sender, status,
    # id) only served that check and cost every webhook insert a page write at a scattered
    # place (about a fifth of the writer's time per event).
    ("DROP INDEX IF EXISTS events_sender",),
)

SCHEMA_VERSION = len(MIGRATIONS)


def newer_schema(path: object, version: int) -> str:
    """What every reader and writer says of a database a newer daemon wrote."""
    return (
        f"{path}: schema version {version} was written by a newer version of the daemon (this "
        f"one knows up to {SCHEMA_VERSION}); upgrade the daemon to use this database"
    )


async def user_version(conn: aiosqlite.Connection) -> int:
    return await on_thread(conn, _version)


def _version(raw: sqlite3.Connection) -> int:
    row = raw.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def _apply(raw: sqlite3.Connection) -> tuple[int, int]:
    """Every pending step and the version bump in one `BEGIN IMMEDIATE` transaction, on the
    connection's own thread: all or nothing, one commit, one hand-off (a fresh database's
    dozens of statements were one hand-off each, and one commit per step)."""
    start = _version(raw)
    if start >= SCHEMA_VERSION:
        return start, start
    raw.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        start = _version(raw)
        if start >= SCHEMA_VERSION:
            raw.execute("ROLLBACK")
            return start, start
        for steps in MIGRATIONS[start:]:
            for sql in steps:
                raw.execute(sql)
        # PRAGMA takes no parameters; SCHEMA_VERSION is our own int.
        raw.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return start, SCHEMA_VERSION


async def migrate(conn: aiosqlite.Connection, path: str) -> tuple[int, int]:
    """Bring the schema to `SCHEMA_VERSION`; returns (from, to). A no-op when current."""
    start = await user_version(conn)
    if start < SCHEMA_VERSION:
        start, version = await on_thread(conn, _apply)  # the version is read again, locked
        if version != start:
            log.info("store.migrated", path=path, from_version=start, to_version=version)
    if start > SCHEMA_VERSION:
        from daemon.errors import DatabaseMismatch

        raise DatabaseMismatch(newer_schema(path, start))
    return start, SCHEMA_VERSION
