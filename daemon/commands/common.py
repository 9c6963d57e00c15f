"""What every subcommand does the same way: load the config, route logs, print JSON, check
the database before opening it, read bounded integers, report a failure as JSON.

Stdout belongs to the command's answer (JSON for `daemon api`, a summary for `run-once`), so
log lines always go to stderr; and every secret the config resolved is handed to the log
redactor the moment the config is loaded, before anything can log or print.

Importing this module is cheap (the config models, the logging setup and the store are
imported by the functions that use them): command modules use `bounded_int` while the parser
is built, and `daemon <command> --help` must not pay for the rest.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.config import Settings

# SQLite's INTEGER is a signed 64-bit number: a larger id or limit cannot even be bound to a
# query (Python raises OverflowError), so the parser refuses it as bad usage.
SQLITE_INT_MAX = 2**63 - 1


_WHOLE = re.compile(r"[+-]?[0-9]+")


def bounded_int(minimum: int = 1, maximum: int = SQLITE_INT_MAX) -> Callable[[str], int]:
    """An argparse `type=` for a whole number from `minimum` to `maximum`: every id, limit and
    count on the command line. Anything else is a usage error (exit 2) that says why."""

    def parse(text: str) -> int:
        # ASCII digits only: int() also reads "1_0" and other scripts' digits ("١٢"), which
        # nobody means as an id (found by probing).
        if not _WHOLE.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}")
        try:
            value = int(text)
        except ValueError:  # too many digits for int()
            value = minimum - 1 if text[0] == "-" else maximum + 1
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {shown}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {shown}")
        return value

    parse.__name__ = "int"  # argparse names the type in some of its own messages
    return parse


# What a terminal acts on rather than shows: C0 and C1 controls (escape sequences, a carriage
# return that overwrites the line, a newline that forges one) and the bidirectional overrides
# that reorder what is shown (U+202E makes "exe.txt" read "txt.exe").
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` for one line of a command's plain output: anything a terminal would act on is
    written as its escape (`\\x1b`, `\\u202e`). Event fields, rendered replies, upstream
    errors and synced data are other people's text."""
    return _UNSHOWABLE.sub(lambda m: ascii(m.group())[1:-1], text)


def safe_lines(lines: list[str]) -> str:
    """`lines` as a command's plain output, each made `terminal_safe`."""
    return "\n".join(terminal_safe(line) for line in lines)


def path_id(text: str) -> str:
    """An argparse `type=` for an upstream record id that becomes a path segment: not empty,
    `.` or `..` (a usage error, exit 2, instead of an internal error later)."""
    from daemon.clients.segments import segment

    try:
        segment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def failure(message: str, error_type: str, code: int, /, **extra: Any) -> dict[str, Any]:
    """The one JSON object a `--json` command prints on stdout when it fails: `error` (the
    message, as stderr shows it), `error_type` (ConfigError, UsageError, StoreError,
    NotFound, an upstream error's class, InternalError...) and `exit` (the exit code), after
    any keys of the command's own answer (`extra`: status's `healthy`, run-once's `jobs`)."""
    return {**extra, "error": message, "error_type": error_type, "exit": code}


def print_failure(value: dict[str, Any]) -> None:
    """`value` (a `failure` object) on stdout, every registered secret masked."""
    from daemon.logs import redact_strings, redact_text

    print(redact_text(json.dumps(redact_strings(value), indent=2, default=str)))


def check_database(path: Path, *, must_exist: bool, source: str | None = None) -> bool:
    """What every command that opens the database checks first, read-only and without
    blocking, so a bad file gets the same clear error whichever command met it:

    - a path that cannot be the daemon's SQLite file (a directory, a device or FIFO, someone
      else's file): `ConfigError` on `daemon.database`, exit 2 — as `check-config` says;
    - a missing file, when `must_exist` (the commands that only read, and replay): exit 1;
    - an SQLite file with tables but no schema version (not the daemon's): exit 2, likewise;
    - a file SQLite cannot read as a database, or one written by a newer daemon: exit 1,
      before a writing command has touched it (no chmod, no migration attempt).

    An older schema passes: the writing commands migrate it, and the read-only store says to
    start the service. A file that cannot be opened for another reason (locked, no access) is
    left for the store to report. `source` names the config file in a `ConfigError`. Returns
    whether the file exists."""
    from daemon.config.checks import database_problem
    from daemon.errors import ConfigError, ConfigProblem, DatabaseMismatch, StoreError

    problem = database_problem(path)
    if problem is not None:
        raise ConfigError(
            [ConfigProblem("daemon.database", f"{str(path)!r} {problem}")], source=source
        )
    if not path.exists():
        if must_exist:
            raise StoreError(missing_database(path))
        return False
    found = _schema_version(path)
    if found is None:
        return True
    version, tables = found
    from daemon.store.schema import SCHEMA_VERSION, newer_schema

    if version > SCHEMA_VERSION:
        raise DatabaseMismatch(newer_schema(path, version))
    if version == 0 and tables:  # every schema of ours has a version: someone else's file
        raise ConfigError(
            [
                ConfigProblem(
                    "daemon.database",
                    f"{str(path)!r} is an SQLite database the daemon did not create (tables "
                    "but no schema version); refusing to touch it",
                )
            ],
            source=source,
        )
    return True


def missing_database(path: Path) -> str:
    return f"database {path} does not exist (has the daemon run yet?)"


def _schema_version(path: Path) -> tuple[int, int] | None:
    """`PRAGMA user_version` of `path` and how many tables it has, opened read-only; None when
    SQLite cannot open it for a reason other than its content (busy, no access: the store's
    own open reports that)."""
    import os
    import sqlite3

    from daemon.errors import StoreError

    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with path.open("rb") as fh:  # database_problem has checked it is a regular file
            header = fh.read(20)
    except OSError:
        return None
    # A reader of a WAL database creates its -wal and -shm files when they are missing. None
    # there means no connection is open: read the file as it is, leaving nothing behind.
    if header[18:19] == b"\x02" and not os.path.exists(f"{path}-shm"):
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        # Reading the schema reads (and checks) the header: a non-database fails here.
        (tables,) = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        return None
    except sqlite3.DatabaseError as exc:  # not a database, malformed
        raise StoreError(f"{path}: cannot open database: {exc}") from None
    finally:
        conn.close()
    return int(version), int(tables)


def load_cli_settings(explicit: str | None, *, log_level: str | None = None) -> Settings:
    """The config named by `--config` (or the default search), with logging set up for a CLI:
    stderr, the config's level unless `log_level` overrides it, secrets registered."""
    from daemon.config import load_settings, resolve_config_path
    from daemon.logs import configure_logging

    settings = load_settings(resolve_config_path(explicit))
    configure_logging(
        log_level or settings.daemon.log_level,
        settings.daemon.log_format,
        secrets=settings.secret_values(),
        basic_pairs=settings.secret_pairs(),
        stream=sys.stderr,
    )
    return settings


def register_secrets(settings: Settings) -> None:
    """Hand every secret the config resolved (and each Basic pair) to the one redactor that
    logs and every CLI output pass through."""
    from daemon.logs import add_basic_pair, add_secrets

    add_secrets(settings.secret_values())
    for user, secret in settings.secret_pairs():
        add_basic_pair(user, secret)


def load_upstream(explicit_config: str | None, kind: str, name: str | None) -> Any:
    """The `[upstreams.<name>]` table a `daemon api <kind>` call talks to: `--upstream NAME`,
    else the first of that kind. Raw API calls log warnings and worse only."""
    from daemon.clients.factory import first_of_kind

    settings = load_cli_settings(explicit_config, log_level="warning")
    return settings.upstreams[first_of_kind(settings, kind, name)]


def emit_json(value: Any) -> None:
    """The command's answer on stdout, every registered secret masked (an upstream that echoes
    a request can put credentials in its answer)."""
    from daemon.logs import redact_strings, redact_text

    text = json.dumps(redact_strings(value), indent=2, default=str, ensure_ascii=False)
    print(redact_text(text))
