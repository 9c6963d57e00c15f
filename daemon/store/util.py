"""Small pure helpers shared by the store modules: timestamps, identifiers, canonical JSON.

Timestamps are stored as fixed-width ISO-8601 UTC text with microseconds and a `Z` suffix
(`2025-01-02T03:04:05.123456Z`). Fixed width matters: SQLite compares them as strings, so
`seen_at < ?` and `ORDER BY received_at` are only correct when every value has the same shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from daemon.errors import StoreError

T = TypeVar("T")

# SQLite's default limit on host parameters was 999 before 3.32; staying below it keeps the
# store portable to whatever libsqlite3 the host Python links against.
MAX_VARIABLES = 900

_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Tables the store owns plus SQL keywords that would confuse a reader even when quoted.
RESERVED_NAMES = frozenset(
    {
        "sync_runs", "sync_state", "contacts", "events", "actions", "halo_threads",
        "subscriptions", "schema_version",
        "abort", "action", "add", "after", "all", "alter", "analyze", "and", "as", "asc",
        "attach", "autoincrement", "before", "begin", "between", "by", "cascade", "case",
        "cast", "check", "collate", "column", "commit", "conflict", "constraint", "create",
        "cross", "current_date", "current_time", "current_timestamp", "database", "default",
        "deferrable", "deferred", "delete", "desc", "detach", "distinct", "drop", "each",
        "else", "end", "escape", "except", "exclusive", "exists", "explain", "fail", "for",
        "foreign", "from", "full", "glob", "group", "having", "if", "ignore", "immediate",
        "in", "index", "indexed", "initially", "inner", "insert", "instead", "intersect",
        "into", "is", "isnull", "join", "key", "left", "like", "limit", "match", "natural",
        "no", "not", "notnull", "null", "of", "offset", "on", "or", "order", "outer", "plan",
        "pragma", "primary", "query", "raise", "recursive", "references", "regexp", "reindex",
        "release", "rename", "replace", "restrict", "right", "rollback", "row", "savepoint",
        "select", "set", "table", "temp", "temporary", "then", "to", "transaction", "trigger",
        "union", "unique", "update", "using", "vacuum", "values", "view", "virtual", "when",
        "where", "with", "without",
    }
)  # fmt: skip


def validate_table_name(name: str) -> str:
    """Refuse anything but a plain lower-case identifier before it can reach SQL text.

    Table names come from the operator's config and are interpolated into DDL (SQLite cannot
    bind identifiers), so this is the injection boundary.
    """
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise StoreError(
            f"invalid table name {name!r}: use 1-63 characters a-z, 0-9, _ starting with a letter"
        )
    if name.startswith("sqlite_") or name in RESERVED_NAMES:
        raise StoreError(f"invalid table name {name!r}: reserved")
    return name


def quote_ident(name: str) -> str:
    """Quote a validated identifier; belt and braces on top of `validate_table_name`."""
    return '"' + validate_table_name(name).replace('"', '""') + '"'


def to_db(when: datetime) -> str:
    """Aware datetime -> the store's fixed-width UTC text."""
    if when.tzinfo is None:
        raise StoreError("naive datetime given to the store; times must be aware UTC")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_db(text: str | None) -> datetime | None:
    """Stored text -> aware UTC datetime (tolerates `+00:00` written by hand)."""
    if text is None:
        return None
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def from_db_req(text: str) -> datetime:
    """`from_db` for NOT NULL columns, so callers get a plain datetime type."""
    parsed = from_db(text)
    assert parsed is not None
    return parsed


def canonical_json(data: Mapping[str, Any]) -> str:
    """The one serialisation hashes are computed over; key order must not count as a change."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(data: Mapping[str, Any]) -> str:
    return encode_record(data)[1]


def encode_record(data: Mapping[str, Any]) -> tuple[str, str]:
    """`(text, hash)`: the stored text *is* the canonical form the hash is over (same values,
    keys sorted), so a record is encoded once per page write, not twice."""
    text = canonical_json(data)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunked(items: Sequence[T], size: int = MAX_VARIABLES) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(n: int) -> str:
    return ",".join("?" * n)
