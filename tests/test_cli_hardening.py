"""The CLI's edges, as an operator or a script meets them (the real CLI in a subprocess):

- with `--json`, every failure is one JSON object on stdout (`error`, `error_type`, `exit`),
  bad usage included, with the exit code unchanged and no secret in it;
- ids, limits and counts out of range (negative, 0 where 1 is the least, past SQLite's
  64-bit INTEGER) are bad usage (exit 2), never an internal error;
- a database from a newer daemon says to upgrade the daemon, not to migrate;
- the commands that open the database for writing check it first, as the read-only ones do;
- `--config` naming a directory or a FIFO says so (and does not block).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.commands.common import SQLITE_INT_MAX, bounded_int
from daemon.errors import ConfigError, StoreError
from daemon.store import NewEvent, Store
from daemon.store.schema import SCHEMA_VERSION
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures: ns_sim, ns_state, ns_clock
from tests.netsapiens_fixtures import T0

ROOT = Path(__file__).resolve().parents[1]
# Configured as a literal (so the file is 0600), and put in the database's path: any message
# naming that path must come out masked.
HARDENING_SECRET = "hardening-literal-7f3a9c2e51"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env={**clean, "PYTHONPATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def write_config(directory: Path, database: Path, extra: str = "") -> Path:
    config = directory / "daemon.toml"
    config.write_text(f'[daemon]\ndatabase = "{database.as_posix()}"\n{extra}')
    config.chmod(0o600)
    return config


NETSAPIENS = f"""
[upstreams.pbx]
kind = "netsapiens"
api_url = "http://127.0.0.1:9/ns-api/v2"
client_id = "ns-client"
client_secret = "{HARDENING_SECRET}"
username = "api@demo"
password = "ns-password-0123"

[webhooks.netsapiens]
secret = "hook-secret-abcdef012345"
public_url = "https://hooks.example.com/webhooks/netsapiens"
subscribe = ["message"]
upstream = "pbx"
"""


def json_failure(proc: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """The one JSON object a failing `--json` command printed, checked against its exit."""
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.strip(), f"nothing on stdout; stderr: {proc.stderr}"
    answer = json.loads(proc.stdout)  # one object, nothing else
    assert isinstance(answer, dict)
    assert isinstance(answer["error"], str) and answer["error"]
    assert isinstance(answer["error_type"], str)
    assert answer["exit"] == code
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return answer


async def seeded(path: Path) -> Path:
    """A current database with one event (id 1)."""
    async with Store.open(path, clock=FakeClock(T0)) as store:
        await store.insert_events([NewEvent("ns", "message.received", "k1", "{}", T0)])
    return path


async def with_version(path: Path, version: int) -> Path:
    await seeded(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {int(version)}")
    conn.close()
    path.chmod(0o644)  # to see that no command tightens (touches) it before refusing it
    return path


# -- 1. --json failures are one JSON object on stdout ----------------------------------------


def test_json_failure_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = write_config(tmp_path, db)
    answer = json_failure(run("--config", str(config), "events", "list", "--json", cwd=tmp_path), 1)
    assert answer["error_type"] == "StoreError" and "does not exist" in answer["error"]
    status = json_failure(run("--config", str(config), "status", "--json", cwd=tmp_path), 1)
    assert status["healthy"] is False and status["database"] == str(db)
    assert not db.exists()


async def test_json_failure_newer_and_corrupt_database(tmp_path: Path) -> None:
    newer = await with_version(tmp_path / "newer.db", SCHEMA_VERSION + 1)
    config = write_config(tmp_path, newer)
    for command in (
        ["status", "--json"],
        ["events", "list", "--json"],
        ["events", "show", "1", "--json"],
    ):
        # Exit 2, as for a bad config: this version cannot use the file, retrying cannot help.
        answer = json_failure(run("--config", str(config), *command, cwd=tmp_path), 2)
        assert answer["error_type"] == "DatabaseMismatch"
        assert "newer version of the daemon" in answer["error"]
    status = json_failure(run("--config", str(config), "status", "--json", cwd=tmp_path), 2)
    assert status["healthy"] is False and status["database"] == str(newer)

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    config = write_config(tmp_path, corrupt)
    answer = json_failure(run("--config", str(config), "events", "list", "--json", cwd=tmp_path), 1)
    assert "cannot open database" in answer["error"]


def test_json_failure_invalid_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "state.db", 'log_levl = "info"\n')
    answer = json_failure(run("--config", str(config), "check-config", "--json", cwd=tmp_path), 2)
    assert answer["error_type"] == "ConfigError"
    assert [p["key"] for p in answer["problems"]] == ["daemon.log_levl"]
    answer = json_failure(run("--config", str(config), "status", "--json", cwd=tmp_path), 2)
    assert answer["healthy"] is False


def test_json_failure_unknown_job(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "state.db")
    proc = run("--config", str(config), "run-once", "nosuchjob", "--json", cwd=tmp_path)
    answer = json_failure(proc, 2)
    assert answer["jobs"] == [] and answer["ok"] is False
    assert "nosuchjob" in answer["error"]


async def test_json_failure_unknown_event_and_bad_usage(tmp_path: Path) -> None:
    config = write_config(tmp_path, await seeded(tmp_path / "state.db"))
    answer = json_failure(
        run("--config", str(config), "events", "show", "99", "--json", cwd=tmp_path), 1
    )
    assert answer["error_type"] == "NotFound" and "99" in answer["error"]
    answer = json_failure(
        run("--config", str(config), "events", "replay", "1", "99", "--json", cwd=tmp_path), 1
    )
    assert answer["replayed"] == 1 and answer["error_type"] == "NotFound"
    # Without --json, a not-found is a message on stderr, not a JSON object on stdout (found by
    # probing).
    for args, said in (
        (["events", "show", "99"], "error: no event with id 99"),
        (["events", "replay", "1", "99"], "error: 1 of the ids do not exist (1 replayed)"),
    ):
        proc = run("--config", str(config), *args, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (1, "") and said in proc.stderr
    proc = run(
        "--config", str(config), "events", "list", "--status", "bogus", "--json", cwd=tmp_path
    )
    answer = json_failure(proc, 2)
    assert answer["error_type"] == "UsageError" and "bogus" in answer["error"]
    assert "usage: daemon events list" in proc.stderr  # the human message stays on stderr
    proc = run(
        "--config",
        str(config),
        "rules",
        "test",
        str(tmp_path / "none.json"),
        "--json",
        cwd=tmp_path,
    )
    answer = json_failure(proc, 2)
    assert "cannot read" in answer["error"]


def test_json_failure_masks_secrets(tmp_path: Path) -> None:
    db = tmp_path / HARDENING_SECRET / "state.db"
    config = write_config(tmp_path, db, NETSAPIENS)
    for command in (["events", "list", "--json"], ["status", "--json"]):
        proc = run("--config", str(config), *command, cwd=tmp_path)
        answer = json_failure(proc, 1)
        assert "[REDACTED]" in answer["error"]
        assert HARDENING_SECRET not in proc.stdout + proc.stderr


def test_without_json_nothing_changes_on_stdout(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "state.db")
    proc = run("--config", str(config), "events", "list", "--limit", "0", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""


# -- 2 and 3. bounded integers ------------------------------------------------------------------


def test_bounded_int() -> None:
    parse = bounded_int(1)
    assert parse("1") == 1 and parse(str(SQLITE_INT_MAX)) == SQLITE_INT_MAX
    for bad in ("0", "-1", str(SQLITE_INT_MAX + 1), "abc", "1.5", "9" * 5000):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at most"):
        parse("9" * 5000)  # more digits than int() reads: still "too large", not "not a number"
    with pytest.raises(argparse.ArgumentTypeError, match="at least"):
        parse("-" + "9" * 5000)
    assert bounded_int(0, 10)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="at most 10"):
        bounded_int(0, 10)("11")


OUT_OF_RANGE = [
    (["events", "show", str(2**63)], "at most"),
    (["events", "show", str(2**70), "--json"], "at most"),
    (["events", "show", "-1"], "at least 1"),
    (["events", "show", "0"], "at least 1"),
    (["events", "replay", "1", str(2**64)], "at most"),
    (["events", "replay", "-5"], "at least 1"),
    (["events", "list", "--limit", "0"], "at least 1"),
    (["events", "list", "--limit", "-1", "--json"], "at least 1"),
    (["events", "list", "--limit", str(2**63)], "at most"),
    (["run-once", "--parallel", "0"], "at least 1"),
    (["sandbox", "--port", "70000"], "at most 65531"),
    (["sandbox", "--demo-size", "0"], "at least 1"),
    (["api", "netsapiens", "messages", "--limit", "0"], "at least 1"),
    # Not numbers, but the same kind of mistake: a usage error, not "invalid configuration".
    (["events", "replay"], "one of the arguments ID --dead is required"),
    (["events", "replay", "1", "--dead", "--json"], "not allowed with argument ID"),
    (["events", "list", "--limit", "0", "--js"], "at least 1"),  # argparse's abbreviation
    # Found by probing: ids a path segment cannot be, and digits int() reads but people do not.
    (["subscriptions", "delete", ""], "is not a record id"),
    (["subscriptions", "delete", ".."], "is not a record id"),
    (["events", "show", "\u0661\u0662"], "not a whole number"),
    (["events", "show", "1_0"], "not a whole number"),
    (["events", "list", "--limit", " 5"], "not a whole number"),
]


@pytest.mark.parametrize(
    ("args", "reason"), OUT_OF_RANGE, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_out_of_range_numbers_are_usage_errors(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    config = write_config(tmp_path, tmp_path / "state.db")
    proc = run("--config", str(config), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "usage: daemon" in proc.stderr and reason in proc.stderr
    assert "internal error" not in proc.stderr and "OverflowError" not in proc.stderr
    if "--json" in args or "--js" in args:
        assert json_failure(proc, 2)["error_type"] == "UsageError"
    else:
        assert proc.stdout == ""
    assert not (tmp_path / "state.db").exists()


async def test_largest_id_is_looked_up(tmp_path: Path) -> None:
    config = write_config(tmp_path, await seeded(tmp_path / "state.db"))
    proc = run(
        "--config", str(config), "events", "show", str(SQLITE_INT_MAX), "--json", cwd=tmp_path
    )
    assert json_failure(proc, 1)["error_type"] == "NotFound"
    proc = run("--config", str(config), "events", "list", "--limit", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [e["id"] for e in json.loads(proc.stdout)] == [1]


# -- 4. the advice for a newer schema -------------------------------------------------------


async def test_newer_schema_says_upgrade_the_daemon(tmp_path: Path) -> None:
    newer = await with_version(tmp_path / "newer.db", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError) as caught:
        async with Store.open(newer, clock=FakeClock(T0), read_only=True):
            pass
    assert "newer version of the daemon" in str(caught.value) and "upgrade" in str(caught.value)
    assert "migrate" not in str(caught.value)
    proc = run("--config", str(write_config(tmp_path, newer)), "events", "list", cwd=tmp_path)
    assert proc.returncode == 2
    assert "upgrade the daemon" in proc.stderr and "migrate" not in proc.stderr


async def test_older_schema_still_says_migrate(tmp_path: Path) -> None:
    older = await with_version(tmp_path / "older.db", 1)
    with pytest.raises(StoreError, match=r"start the service .* to migrate it"):
        async with Store.open(older, clock=FakeClock(T0), read_only=True):
            pass


# -- 5. the writing commands check the database first ---------------------------------------


async def test_replay_refuses_a_newer_database_before_touching_it(tmp_path: Path) -> None:
    newer = await with_version(tmp_path / "state.db", SCHEMA_VERSION + 1)
    config = write_config(tmp_path, newer)
    for command in (["events", "replay", "--dead"], ["events", "replay", "1", "--json"]):
        proc = run("--config", str(config), *command, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "upgrade the daemon" in proc.stderr
        assert "permissions_tightened" not in proc.stderr
    assert json_failure(proc, 2)["error_type"] == "DatabaseMismatch"
    assert oct(newer.stat().st_mode & 0o777) == "0o644"  # not chmod-ed, not migrated
    assert not Path(f"{newer}-wal").exists()


def test_replay_refuses_someone_elses_database(tmp_path: Path) -> None:
    foreign = tmp_path / "state.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE events (a)")
    conn.commit()
    conn.close()
    foreign.chmod(0o644)
    proc = run(
        "--config", str(write_config(tmp_path, foreign)), "events", "replay", "--dead", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert "daemon.database" in proc.stderr and "did not create" in proc.stderr
    assert oct(foreign.stat().st_mode & 0o777) == "0o644"


async def test_subscriptions_check_the_database_first(tmp_path: Path) -> None:
    newer = await with_version(tmp_path / "state.db", SCHEMA_VERSION + 1)
    config = write_config(tmp_path, newer, NETSAPIENS)
    for op in ("list", "sync"):
        proc = run("--config", str(config), "subscriptions", op, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "upgrade the daemon" in proc.stderr and "Traceback" not in proc.stderr
    assert oct(newer.stat().st_mode & 0o777) == "0o644"
    directory = tmp_path / "dir.db"
    directory.mkdir()
    proc = run(
        "--config",
        str(write_config(tmp_path, directory, NETSAPIENS)),
        "subscriptions",
        "list",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "daemon.database" in proc.stderr and "is a directory" in proc.stderr


async def test_subscriptions_list_does_not_create_a_database(
    ns_sim: str, ns_clock: FakeClock, tmp_path: Path
) -> None:
    from daemon.commands.cmd_subscriptions import run as subscriptions
    from daemon.config import parse_settings

    db = tmp_path / "state.db"
    settings = parse_settings(
        {
            "daemon": {"database": str(db)},
            "upstreams": {
                "pbx": {
                    "kind": "netsapiens",
                    "api_url": ns_sim,
                    "client_id": "ns-client",
                    "client_secret": "ns-secret",
                    "username": "api@demo",
                    "password": "demo-password",
                }
            },
            "webhooks": {
                "netsapiens": {
                    "secret": "hook-secret-abcdef012345",
                    "public_url": "https://hooks.example.com/webhooks/netsapiens",
                    "subscribe": ["message"],
                    "upstream": "pbx",
                }
            },
        },
        env={},
        credentials_dir=None,
        base_dir=tmp_path,
    )
    listed = await subscriptions(settings, "list", None, clock=ns_clock)
    assert listed == {"upstream": [], "local": []}
    deleted = await subscriptions(settings, "delete", "nope", clock=ns_clock)
    assert deleted["local_deleted"] is False
    assert not db.exists()
    synced = await subscriptions(settings, "sync", None, clock=ns_clock)  # sync creates it
    assert len(synced["created"]) == 1 and db.exists()
    listed = await subscriptions(settings, "list", None, clock=ns_clock)
    assert [s["id"] for s in listed["local"]] == synced["created"]


def test_a_database_path_under_a_regular_file_is_invalid_config_for_status(
    tmp_path: Path,
) -> None:
    """Found by probing: status called such a path "missing" (exit 1) where check-config and
    events call it invalid configuration (exit 2)."""
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path, tmp_path / "afile" / "state.db")
    for args in (["status"], ["events", "list"], ["check-config"]):
        proc = run("--config", str(config), *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "daemon.database" in proc.stderr


async def test_inspecting_a_closed_database_leaves_no_files_and_needs_no_write_access(
    tmp_path: Path,
) -> None:
    """Found by probing: a read-only command on a closed WAL database created `-wal`/`-shm`
    beside it, and failed where the directory was not writable ("attempt to write a readonly
    database"; not reproducible as root, who may write anywhere). No `-shm` means no open
    connection: the file is read as it stands."""
    database = await seeded(tmp_path / "state.db")
    assert not Path(f"{database}-shm").exists() and not Path(f"{database}-wal").exists()
    config = write_config(tmp_path, database)
    for args, said in (
        (["events", "list"], "message.received"),
        (["events", "show", "1"], "dedupe key k1"),
        (["status"], "inbox:"),
    ):
        proc = run("--config", str(config), *args, cwd=tmp_path)
        assert proc.returncode == 0 and said in proc.stdout, (args, proc.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.toml", "state.db"], args
    # Beside a running service (its -shm there), reads see what it committed since.
    async with Store.open(database, clock=FakeClock(T0)) as store:
        await store.insert_events([NewEvent("ns", "message.received", "k2", "{}", T0)])
        proc = run("--config", str(config), "events", "list", cwd=tmp_path)
        assert proc.returncode == 0 and "k2" not in proc.stdout  # keys are not listed...
        assert proc.stdout.count("message.received") == 2  # ...but both events are


def test_check_database_names_the_key(tmp_path: Path) -> None:
    from daemon.commands.common import check_database

    with pytest.raises(ConfigError, match=r"daemon\.database"):
        check_database(tmp_path, must_exist=False)
    with pytest.raises(StoreError, match="does not exist"):
        check_database(tmp_path / "missing.db", must_exist=True)
    assert check_database(tmp_path / "missing.db", must_exist=False) is False


# -- 6. --config that is not a regular file -------------------------------------------------


def test_config_that_is_a_directory_or_a_fifo(tmp_path: Path) -> None:
    proc = run("--config", str(tmp_path), "status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is a directory, not a regular file" in proc.stderr
    assert "does not exist" not in proc.stderr
    fifo = tmp_path / "daemon.fifo"
    os.mkfifo(fifo)
    proc = run("--config", str(fifo), "check-config", "--json", cwd=tmp_path)  # does not block
    answer = json_failure(proc, 2)
    assert "not a regular file" in answer["error"] and "does not exist" not in answer["error"]
    proc = run("status", cwd=tmp_path, env={"DAEMON_CONFIG": str(tmp_path)})
    assert proc.returncode == 2
    assert "(from $DAEMON_CONFIG) is a directory" in proc.stderr
    proc = run("--config", str(tmp_path / "nope.toml"), "status", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


async def test_events_list_and_show_escape_what_a_terminal_would_act_on(tmp_path: Path) -> None:
    """A dedupe key and an error are other people's text (the PBX's id, an upstream's answer):
    printed plain, an escape sequence in them would act on the operator's terminal."""
    database = tmp_path / "state.db"
    async with Store.open(database, clock=FakeClock(T0)) as store:
        (inserted,) = await store.insert_events(
            [NewEvent("ns", "message.received", "k\x1b]0;owned\x07\u202e", "{}", T0)]
        )
        await store.finish_event(inserted.id, "dead", error="upstream said \x1b[2J\rDONE")
    config = write_config(tmp_path, database)
    for args in (["events", "list"], ["events", "show", str(inserted.id)]):
        proc = run("--config", str(config), *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert not {"\x1b", "\x07", "\r", "\u202e"} & set(proc.stdout)
        assert "\\x1b[2J\\rDONE" in proc.stdout
    assert "k\\x1b]0;owned\\x07\\u202e" in proc.stdout
