"""The `contacts` index: phone (E.164) → record, rebuilt per table after each sync.

Rules look a sender up here; the record's current `data` is joined from its record table at
lookup time rather than copied, so the index stays small and never serves stale fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from daemon.errors import StoreError
from daemon.store.db import Database, execute
from daemon.store.util import quote_ident, validate_table_name


@dataclass(frozen=True)
class ContactEntry:
    """One index entry as the sync builds it."""

    phone: str
    record_id: str
    name: str | None = None


@dataclass(frozen=True)
class Contact:
    """A matched contact plus its live record's data (the rules' `contact` and `client`)."""

    phone: str
    table: str
    record_id: str
    name: str | None
    data: dict[str, Any]


class ContactsRepo(Database):
    async def replace_contacts(self, table: str, entries: Iterable[ContactEntry]) -> int:
        """Swap this table's entries for `entries` atomically; returns how many were kept."""
        validate_table_name(table)
        rows = list(
            dict.fromkeys((e.phone, table, str(e.record_id), e.name) for e in entries if e.phone)
        )

        async def fn(conn: aiosqlite.Connection) -> int:
            await execute(conn, "DELETE FROM contacts WHERE table_name = ?", (table,))
            await conn.executemany(
                "INSERT OR IGNORE INTO contacts (phone, table_name, record_id, name) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
            return await _count(conn, table)

        return await self.write(fn)

    async def contacts_for(self, phone: str) -> list[Contact]:
        """Every live record indexed under `phone`, ordered by table then record id.

        Entries whose record was tombstoned (or whose table vanished) are skipped.
        """
        rows = await self.fetchall(
            "SELECT phone, table_name, record_id, name FROM contacts WHERE phone = ? "
            "ORDER BY table_name, record_id",
            (phone,),
        )
        found: list[Contact] = []
        for row in rows:
            table = row["table_name"]
            try:
                q = quote_ident(table)
            except StoreError:
                continue  # written by hand into the index; never interpolate it
            try:
                rec = await self.fetchone(
                    f"SELECT data FROM {q} WHERE id = ? AND deleted_at IS NULL",
                    (row["record_id"],),
                )
            except StoreError:
                continue  # the table was dropped since the index was built
            if rec is None:
                continue
            found.append(
                Contact(
                    phone=row["phone"],
                    table=table,
                    record_id=row["record_id"],
                    name=row["name"],
                    data=dict(json.loads(rec["data"])),
                )
            )
        return found

    async def lookup_contact(self, phone: str) -> Contact | None:
        """The first live match (deterministic: by table name, then record id)."""
        matches = await self.contacts_for(phone)
        return matches[0] if matches else None

    async def count_contacts(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) AS n FROM contacts")
        return int(row["n"]) if row else 0


async def _count(conn: aiosqlite.Connection, table: str) -> int:
    async with conn.execute("SELECT COUNT(*) FROM contacts WHERE table_name = ?", (table,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
