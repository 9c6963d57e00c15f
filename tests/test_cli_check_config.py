"""`daemon check-config` end to end, in a subprocess as an operator runs it."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.cli import main as cli_main
from daemon.commands.cmd_check_config import next_runs, summarize
from daemon.config import load_settings
from daemon.logs import configure_logging, log
from daemon.store.schema import SCHEMA_VERSION
from tests.logstate import logging_restored
from tests.test_config import EXAMPLE, EXAMPLE_ENV

ROOT = Path(__file__).resolve().parents[1]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV and k != "DAEMON_CONFIG"}
    path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", *args],
        env={**clean, "PYTHONPATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in EXAMPLE_ENV.values():
            assert secret not in text


def test_example_config_exit_0_and_redacted() -> None:
    proc = run("--config", str(EXAMPLE), env=EXAMPLE_ENV)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert str(EXAMPLE) in out
    assert "/var/lib/integration-daemon/state.db" in out and "127.0.0.1:8780" in out
    assert "blesta [blesta] https://billing.example.com/api" in out
    assert "key=[set]" in out and "client_secret=[set]" in out
    assert "blesta-clients" in out and "every 15m" in out and "cron 30 2 * * *" in out
    assert "1. balance: on message.received → sms_reply" in out
    assert "hooks.example.com/webhooks/netsapiens/<model>/[secret]" in out
    assert_no_secrets(proc.stdout, proc.stderr)


def test_json_output() -> None:
    proc = run("--config", str(EXAMPLE), "--json", env=EXAMPLE_ENV)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["valid"] is True
    assert [u["name"] for u in data["upstreams"]] == [
        "blesta",
        "reseller",
        "billomat",
        "halo",
        "netsapiens",
    ]
    assert data["upstreams"][0]["auth"] == {"user": "[set]", "key": "[set]"}
    assert all(len(job["next_runs"]) == 3 for job in data["sync"])
    assert [r["name"] for r in data["rules"]][:2] == ["balance", "after-hours"]
    assert_no_secrets(proc.stdout, proc.stderr)


def test_config_from_environment_variable() -> None:
    proc = run(env={**EXAMPLE_ENV, "DAEMON_CONFIG": str(EXAMPLE)})
    assert proc.returncode == 0, proc.stderr


def test_invalid_config_exit_2_names_every_key(tmp_path: Path) -> None:
    bad = EXAMPLE.read_text().replace('every = "1h"', 'every = "hourly"', 1)
    bad = bad.replace('log_level = "info"', 'log_level = "loud"')
    path = tmp_path / "daemon.toml"
    path.write_text(bad)
    env = {k: v for k, v in EXAMPLE_ENV.items() if k != "HALO_CLIENT_SECRET"}
    proc = run("--config", str(path), env=env)
    assert proc.returncode == 2
    assert "sync[1].every: invalid duration 'hourly'" in proc.stderr
    assert "daemon.log_level" in proc.stderr
    assert "upstreams.halo.client_secret: environment variable HALO_CLIENT_SECRET" in proc.stderr
    assert proc.stdout == ""
    assert_no_secrets(proc.stdout, proc.stderr)


def test_literal_secret_in_readable_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    literal = "literal-blesta-key-123"
    path = tmp_path / "daemon.toml"
    path.write_text(EXAMPLE.read_text().replace('"${BLESTA_API_KEY}"', f'"{literal}"'))
    path.chmod(0o644)
    proc = run("--config", str(path), env=EXAMPLE_ENV)
    assert proc.returncode == 2
    assert "upstreams.blesta.key" in proc.stderr and "0644" in proc.stderr
    assert literal not in proc.stderr + proc.stdout
    path.chmod(0o600)
    proc = run("--config", str(path), env=EXAMPLE_ENV)
    assert proc.returncode == 0, proc.stderr
    assert literal not in proc.stdout + proc.stderr


def test_missing_config_exit_2(tmp_path: Path) -> None:
    proc = run("--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_toml_syntax_error_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text("[daemon\n")
    proc = run("--config", str(path))
    assert proc.returncode == 2
    assert "TOML syntax error" in proc.stderr and "line 1" in proc.stderr


def test_next_runs_every_and_cron() -> None:
    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    now = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
    jobs = {j.name: j for j in settings.sync}
    assert next_runs(jobs["halo-tickets"], now)[2] == datetime(2025, 3, 1, 12, 15, 5, tzinfo=UTC)
    assert next_runs(jobs["blesta-revenue"], now) == [
        datetime(2025, 3, d, 2, 30, tzinfo=UTC) for d in (2, 3, 4)
    ]
    summary = summarize(settings, EXAMPLE, now=now)
    assert summary["sync"][2]["next_runs"][0] == "2025-03-02T02:30:00Z"


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


@pytest.mark.usefixtures("_restore_logging")
def test_config_secrets_never_reach_the_log() -> None:
    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    out = io.StringIO()
    configure_logging("debug", "json", secrets=settings.secret_values(), stream=out)
    log.info("config.loaded", settings=repr(settings.model_dump()))
    try:
        halo = settings.upstream("halo")
        raise RuntimeError(f"token request with {halo.client_secret.get_secret_value()} refused")  # type: ignore[union-attr]
    except RuntimeError:
        log.exception("auth.failed", upstream="halo")
    logging.getLogger("aiohttp.access").info(
        "POST /webhooks/netsapiens/message/%s 200", EXAMPLE_ENV["NS_WEBHOOK_SECRET"]
    )
    text = out.getvalue()
    assert text.count("\n") == 3
    assert_no_secrets(text)
    assert "[REDACTED]" in text


# --- configuration errors are exit 2, always, and never a traceback ----------------------------


def run_all(configs: dict[str, Path], env: dict[str, str]) -> dict[str, tuple[int, str, str]]:
    """`check-config` on each file, all at once (each is a fresh interpreter)."""
    clean = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV and k != "DAEMON_CONFIG"}
    path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH", "")) if p)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "daemon", "check-config", "--config", str(config)],
            env={**clean, "PYTHONPATH": path, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name, config in configs.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = (proc.returncode, out, err)
    return results


def _variant(old: str, new: str, text: str | None = None) -> str:
    text = EXAMPLE.read_text() if text is None else text
    assert old in text, old
    return text.replace(old, new, 1)


def _tables(text: str, names: list[str]) -> str:
    for name in names:
        text += f'\n[[sync]]\nname = "t-{len(text)}"\nupstream = "blesta"\nresource = "c"\n'
        text += f'every = "1h"\ntable = "{name}"\n'
    return text


# Every value problem of issue 14 §5 in one file: each must be reported at its key.
MANY_PROBLEMS = {
    "sync[0].every": ('every = "15m"', "every = inf"),
    "sync[1].every": ('every = "1h"', 'every = "99999999999w"'),
    "sync[2].cron": ('cron = "30 2 * * *"', 'cron = "0 0 31 2 *"'),
    "upstreams.blesta.timeout": ('\ntimeout = "30s"', "\ntimeout = nan"),
    "daemon.retention": ('retention = "90d"', "retention = nan"),
    "upstreams.blesta.key": ('key = "${BLESTA_API_KEY}"', 'key = ""'),
    "upstreams.reseller.url": (
        '"https://account.blesta.com/plugin/blesta_reseller/v2/index"',
        '"http://user:hunter2-password@account.example.com"',
    ),
    "upstreams.billomat.api_key": ('"${BILLOMAT_API_KEY}"', '{ file = "/dev/urandom" }'),
    "upstreams.halo.client_secret": ('"${HALO_CLIENT_SECRET}"', '{ file = "fifo" }'),
}
TABLES = ["select", "key", "values", "order", "clients\\n"]
EXAMPLE_JOBS = len(tomllib.loads(EXAMPLE.read_text())["sync"])


def test_bad_configs_are_exit_2_without_traceback(tmp_path: Path) -> None:
    """In a subprocess, as an operator runs it: exit 2, every problem, no traceback."""
    text = EXAMPLE.read_text()
    for old, new in MANY_PROBLEMS.values():
        text = _variant(old, new, text)
    os.mkfifo(tmp_path / "fifo")
    configs = {
        "many": tmp_path / "many.toml",
        "not-utf8": tmp_path / "not-utf8.toml",
        "tables-400-deep": tmp_path / "deep.toml",
        "array-400-deep": tmp_path / "deep-array.toml",
    }
    configs["many"].write_text(_tables(text, TABLES))
    configs["not-utf8"].write_bytes(EXAMPLE.read_bytes() + b"\n# caf\xe9\n")
    configs["tables-400-deep"].write_text("x = " + "{a=" * 400 + "1" + "}" * 400 + "\n")
    configs["array-400-deep"].write_text(
        _variant("params = {", "params = { deep = " + "[" * 400 + "]" * 400 + ", ")
    )
    for path in configs.values():
        path.chmod(0o600)
    results = run_all(configs, EXAMPLE_ENV)
    for name, (code, out, err) in results.items():
        assert code == 2, (name, err)
        assert "Traceback" not in err and out == "", (name, err)
        assert "invalid configuration" in err, (name, err)
        assert_no_secrets(out, err)
    err = results["many"][2]
    for key in MANY_PROBLEMS:
        assert f"\n  {key}: " in err, (key, err)
    for i, _name in enumerate(TABLES, start=EXAMPLE_JOBS):
        assert f"\n  sync[{i}].table: invalid table name" in err, (i, err)
    assert "hunter2-password" not in err
    assert "not UTF-8 text (byte 0xe9" in results["not-utf8"][2]
    assert "nested" in results["tables-400-deep"][2]
    assert "nested more than 32 levels deep" in results["array-400-deep"][2]


def test_empty_environment_secret_is_exit_2() -> None:
    proc = run("--config", str(EXAMPLE), env={**EXAMPLE_ENV, "BLESTA_API_KEY": ""})
    assert proc.returncode == 2
    assert "upstreams.blesta.key: environment variable BLESTA_API_KEY is empty" in proc.stderr


@pytest.mark.usefixtures("_restore_logging")
def test_database_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    os.mkfifo(tmp_path / "fifo.db")
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    ours = tmp_path / "ours.db"
    conn = sqlite3.connect(ours)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    cases = {
        tmp_path: 2,
        Path("/dev/null"): 2,
        tmp_path / "fifo.db": 2,
        notes: 2,
        notes / "state.db": 2,
        foreign: 2,  # someone else's SQLite file: every command refuses it
        tmp_path / "new" / "dir" / "state.db": 0,
        ours: 0,
        newer: 0,  # a valid config; what `run` will say about the file is a warning
    }
    for database, expected in cases.items():
        path = tmp_path / "daemon.toml"
        path.write_text(
            _variant(
                'database = "/var/lib/integration-daemon/state.db"', f'database = "{database}"'
            )
        )
        code = cli_main(["check-config", "--config", str(path)])
        err = capsys.readouterr().err
        assert code == expected, (database, err)
        if expected:
            assert "daemon.database:" in err and "Traceback" not in err, (database, err)
        elif database == newer:
            assert "warning: daemon.database:" in err and "upgrade the daemon" in err, err
        else:
            assert "warning: daemon.database" not in err, (database, err)
    assert notes.read_text() == "my precious notes\n"
    assert not (tmp_path / "new").exists()  # checked, never created


def test_short_secrets_are_warned_about() -> None:
    proc = run(
        "--config",
        str(EXAMPLE),
        env={**EXAMPLE_ENV, "BLESTA_API_KEY": "abc", "HALO_CLIENT_SECRET": "abcdefg"},
    )
    assert proc.returncode == 0
    assert "warning: upstreams.blesta.key is shorter than 4 characters" in proc.stderr
    assert "warning: upstreams.halo.client_secret is shorter than 8 characters" in proc.stderr


def test_summary_shows_the_limits() -> None:
    proc = run("--config", str(EXAMPLE), "--json", env=EXAMPLE_ENV)
    data = json.loads(proc.stdout)
    assert data["upstreams"][0]["max_response_bytes"] == "64MiB"
    assert data["sync"][0]["max_pages"] == 100000
    assert data["sync"][0]["max_tombstone_fraction"] == 0.5
