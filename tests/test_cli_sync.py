"""The real CLI in a subprocess: --help everywhere, exit codes, the sandbox run into SQLite,
and a sync killed mid-run that the next run heals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMON = [sys.executable, "-m", "daemon"]
ENV = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}


def run(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DAEMON, *args], capture_output=True, text=True, timeout=timeout, env=ENV, **kw
    )


HELP_COMMANDS = [
    [],
    ["check-config"],
    ["run-once"],
    ["status"],
    ["sandbox"],
    ["subscriptions"],
    ["api"],
    ["api", "blesta"],
    ["api", "reseller"],
    ["api", "halo"],
    ["api", "billomat"],
    ["api", "netsapiens"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "daemon")
def test_help_for_every_command(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: daemon" in result.stdout


@pytest.mark.parametrize("args", [["no-such-command"], ["run-once", "--bogus"], []])
def test_bad_usage_exits_2(args: list[str]) -> None:
    assert run(*args).returncode == 2


def tables(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT job FROM sync_runs GROUP BY job")]
        return {
            n: conn.execute(f'SELECT count(*) FROM "{n.replace("-", "_")}"').fetchone()[0]
            for n in names
        }


def test_sandbox_run_once_syncs_every_upstream_kind(tmp_path: Path) -> None:
    result = run("sandbox", "--run-once", "--json", "--dir", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition("\n")
    assert first == f"config: {tmp_path / 'sandbox.toml'}"
    summary = json.loads(rest)
    assert summary["ok"] is True
    jobs = {j["job"]: j for j in summary["jobs"]}
    assert set(jobs) >= {
        "blesta-clients",
        "blesta-revenue",
        "reseller-licenses",
        "billomat-invoices",
        "halo-tickets",
    }
    db = tmp_path / "state.db"
    counts = tables(db)
    for name, job in jobs.items():
        assert job["status"] == "ok" and job["fetched"] > 0, job
        assert counts[name] == job["inserted"], name
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] > 0
        periods = conn.execute("SELECT count(DISTINCT period) FROM blesta_revenue").fetchone()
        assert periods[0] == 3
    # the JSON log went to stderr, one object per line, and never carries the demo secrets
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "sync.finished" for e in lines)
    config = (tmp_path / "sandbox.toml").read_text()
    assert "demo-blesta-key" in config and "demo-blesta-key" not in result.stderr
    assert oct((tmp_path / "sandbox.toml").stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A long-running `daemon sandbox` (simulators only); yields its config path."""
    proc = subprocess.Popen(
        [*DAEMON, "sandbox", "--simulators-only", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("config: "), line
        yield Path(line.removeprefix("config: ")), proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


def set_faults(config: Path, upstream_key: str, faults: dict[str, object]) -> None:
    """POST to the simulator's fault-injection control route."""
    url = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in config.read_text().splitlines()
        if line.startswith(f"{upstream_key} = ")
    )
    root = url.rsplit("/api", 1)[0]
    req = urllib.request.Request(
        root + "/__sim__/faults", data=json.dumps(faults).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # loopback only
        assert resp.status == 200


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition with a deadline (waiting on an event, not on time passing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def committed_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM blesta_clients").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_killed_mid_run_leaves_consistent_db_and_next_run_heals(sandbox) -> None:  # type: ignore[no-untyped-def]
    config, _ = sandbox
    db = config.parent / "state.db"
    set_faults(config, "url", {"latency": 0.6})  # the first `url =` is Blesta's
    proc = subprocess.Popen(
        [*DAEMON, "--config", str(config), "run-once", "blesta-clients"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_for(lambda: committed_rows(db) > 0)  # page 1 committed, later pages in flight
    finally:
        proc.kill()
        proc.wait(timeout=10)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT count(*) FROM blesta_clients").fetchone()[0]
        assert 0 < rows < 60  # a whole page or more, never a partial page
        assert rows % 20 == 0
        assert conn.execute("SELECT status FROM sync_runs").fetchall() == [("running",)]
        assert (
            conn.execute(
                "SELECT count(*) FROM blesta_clients WHERE deleted_at IS NOT NULL"
            ).fetchone()[0]
            == 0
        )
    set_faults(config, "url", {"latency": 0.0})
    healed = run("--config", str(config), "run-once", "blesta-clients", "--json")
    assert healed.returncode == 0, healed.stderr
    job = json.loads(healed.stdout)["jobs"][0]
    assert job["status"] == "ok" and job["fetched"] == 60
    assert job["inserted"] == 60 - rows and job["unchanged"] == rows
    status = run("--config", str(config), "status", "--json")
    assert json.loads(status.stdout)  # readable while a stale 'running' row exists


def test_run_once_exit_codes(sandbox) -> None:  # type: ignore[no-untyped-def]
    config, _ = sandbox
    unknown = run("--config", str(config), "run-once", "no-such-job")
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr
    set_faults(config, "url", {"fail_next": 100, "fail_status": 500})
    failed = run("--config", str(config), "run-once", "blesta-clients", "reseller-credit", "--json")
    assert failed.returncode == 1
    jobs = {j["job"]: j for j in json.loads(failed.stdout)["jobs"]}
    assert jobs["blesta-clients"]["status"] == "failed"
    assert jobs["blesta-clients"]["error_type"] == "ServerError"
    assert jobs["reseller-credit"]["status"] == "ok"  # one failed job does not stop the rest


def test_api_stdout_is_pure_json_and_a_closed_pipe_is_quiet(sandbox) -> None:  # type: ignore[no-untyped-def]
    config, _ = sandbox
    for args in (
        ["api", "netsapiens", "token"],
        ["subscriptions", "sync"],
        ["api", "halo", "tickets", "list", "page_size=2"],
    ):
        result = run("--config", str(config), *args)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)  # no log line mixed into the answer
        assert "demo-password" not in result.stdout + result.stderr
    proc = subprocess.Popen(
        [*DAEMON, "--config", str(config), "api", "blesta", "clients", "getList"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the answer is written: EPIPE for sure
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err
