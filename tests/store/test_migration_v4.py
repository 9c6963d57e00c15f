"""Migration 4: a subscription's post URL, recorded by an older daemon with its webhook secret
as the last path segment, is kept masked; the secret is gone from the file's bytes too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from daemon.clock import FakeClock
from daemon.store import Store
from tests.store.schemas import schema_at

SECRET = "hook-secret-migration-v4-0123456789"
TS = "2025-01-02T03:04:05.000000Z"


def make_v3(path: Path, urls: list[str]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        schema_at(conn, 3)
        conn.executemany(
            "INSERT INTO subscriptions (id, model, post_url, expires_at, status, updated_at) "
            "VALUES (?, 'message', ?, NULL, 'active', ?)",
            [(f"s{i}", url, TS) for i, url in enumerate(urls)],
        )
    finally:
        conn.close()


async def test_v3_post_urls_lose_their_secret(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    make_v3(
        db,
        [
            f"https://hooks.example.com/webhooks/netsapiens/message/{SECRET}",
            "https://hooks.example.com/webhooks/netsapiens/cdr/[REDACTED]",  # already masked
        ],
    )
    assert SECRET.encode() in db.read_bytes()
    async with Store.open(db, clock=FakeClock()) as store:
        rows = await store.list_subscriptions()
    assert [r.post_url for r in rows] == [
        "https://hooks.example.com/webhooks/netsapiens/message/[REDACTED]",
        "https://hooks.example.com/webhooks/netsapiens/cdr/[REDACTED]",
    ]
    for path in tmp_path.iterdir():  # the database, and any -wal left behind
        assert SECRET.encode() not in path.read_bytes(), path
