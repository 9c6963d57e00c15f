"""The peer scripts' SQLite write: one table, one executemany, one transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def write(db: str, table: str, records: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, data TEXT)")
            conn.executemany(
                f"INSERT OR REPLACE INTO {table} VALUES (?, ?)",
                [(str(r["id"]), json.dumps(r)) for r in records],
            )
    finally:
        conn.close()
