"""The one rule for record-table names, shared by the config (at load) and the store (before SQL).

Table names come from the operator's `[[sync]] table` and are interpolated into DDL (SQLite
cannot bind identifiers), so this is the injection boundary. It lives in a module of its own,
with no imports, because `check-config` must apply exactly the rule the store applies without
loading the store (aiosqlite) to do it.
"""

from __future__ import annotations

import re

_IDENT = re.compile(r"[a-z][a-z0-9_]{0,62}")

# Names the store's schema uses (tables and indexes share SQLite's namespace).
# tests/security/test_table_names.py checks this against a freshly migrated database.
DAEMON_TABLES = frozenset(
    {
        "sync_runs", "sync_state", "contacts", "events", "actions", "halo_threads",
        "subscriptions", "schema_version",
        "sync_runs_job", "sync_runs_status", "contacts_table", "events_due",
        "events_source_kind", "actions_status", "actions_event", "actions_rule_created",
        "own_numbers", "guard_state", "events_sender", "events_open", "actions_phone_rule",
        "actions_conversation", "actions_auto_reply", "contacts_gen",
    }
)  # fmt: skip
# SQL keywords that would confuse a reader (and a careless query) even when quoted.
SQL_KEYWORDS = frozenset(
    {
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
RESERVED_NAMES = DAEMON_TABLES | SQL_KEYWORDS


def table_name_problem(name: object) -> str | None:
    """Why `name` cannot be a record table, or None when it can.

    `fullmatch`, not `match` with `$`: `$` also matches before a trailing newline, which is how
    `"clients\\n"` once passed the config and failed in the store.
    """
    shown = repr(name) if len(repr(name)) <= 70 else repr(name)[:66] + "...'"
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        return f"invalid table name {shown}: use 1-63 characters a-z, 0-9, _ starting with a letter"
    if name.startswith("sqlite_"):
        return f"invalid table name {shown}: the sqlite_ prefix is SQLite's own"
    if name in DAEMON_TABLES:
        return f"invalid table name {shown}: reserved for the daemon's own tables"
    if name in SQL_KEYWORDS:
        return f"invalid table name {shown}: an SQL keyword"
    return None
