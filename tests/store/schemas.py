"""A database laid out as a daemon of a given schema version left it, for migration and
raw-SQL tests: the store's own migration steps, applied without the Store."""

from __future__ import annotations

import sqlite3

from daemon.store.schema import MIGRATIONS, SCHEMA_VERSION


def schema_at(conn: sqlite3.Connection, version: int = SCHEMA_VERSION) -> None:
    """Apply migrations 1..`version` to `conn` and record the version, as that daemon would."""
    for steps in MIGRATIONS[:version]:
        for sql in steps:
            conn.execute(sql)
    conn.execute(f"PRAGMA user_version = {int(version)}")
