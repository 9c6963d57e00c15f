"""`daemon status`: the report, and its exit code as a health check."""

import importlib.util
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.commands.cmd_status import collect_status, render_text
from daemon.store import NewEvent, Store

needs_config = pytest.mark.skipif(
    importlib.util.find_spec("daemon.config") is None, reason="daemon.config not written yet"
)


async def _seed(path: Path, clock: FakeClock, *, fail: bool = False, dead: bool = False) -> None:
    async with Store.open(path, clock=clock) as store:
        r = await store.start_run("blesta-clients")
        clock.advance(2)
        await store.finish_run(r, "ok", pages=1, fetched=3, inserted=3)
        r = await store.start_run("halo-tickets")
        await store.finish_run(r, "failed" if fail else "ok", error="boom" if fail else None)
        await store.start_run("halo-tickets")  # running now: judged by the previous run
        [ev] = await store.insert_events([NewEvent("ns", "m", "k", "{}", clock.now())])
        if dead:
            await store.set_event_status(ev.id, "dead", error="gave up")
        await store.upsert_subscription(
            "sub1", "message", "https://x/y", clock.now() + timedelta(hours=1), "active"
        )


async def test_collect_status_healthy(db_path: Path, clock: FakeClock) -> None:
    await _seed(db_path, clock)
    report = await collect_status(db_path, clock=clock, jobs=["never-ran"])
    assert report["healthy"] is True
    jobs = {j["job"]: j for j in report["jobs"]}
    assert jobs["blesta-clients"]["fetched"] == 3 and jobs["blesta-clients"]["duration_s"] == 2.0
    assert jobs["halo-tickets"]["status"] == "running"
    assert jobs["halo-tickets"]["last_finished_status"] == "ok"
    assert jobs["never-ran"]["status"] == "never"
    assert report["events"]["pending"] == 1
    assert report["subscriptions"][0]["expires_in_s"] == 3600
    assert "healthy" in render_text(report)


async def test_a_job_no_longer_configured_is_listed_but_not_counted(
    db_path: Path, clock: FakeClock
) -> None:
    """Found by probing: a job that failed and was then renamed or removed kept `status`
    unhealthy (exit 1) for ever, retention keeping each job's latest run."""
    await _seed(db_path, clock, fail=True)
    report = await collect_status(db_path, clock=clock, jobs=["blesta-clients"])
    assert report["healthy"] is True and report["problems"] == []
    jobs = {j["job"]: j for j in report["jobs"]}
    assert jobs["halo-tickets"]["configured"] is False and jobs["blesta-clients"]["configured"]
    assert "(no longer configured: not counted)" in render_text(report)
    report = await collect_status(db_path, clock=clock, jobs=["halo-tickets"])
    assert report["healthy"] is False  # configured, its last run failed


async def test_collect_status_unhealthy(db_path: Path, clock: FakeClock) -> None:
    await _seed(db_path, clock, fail=True, dead=True)
    report = await collect_status(db_path, clock=clock)
    assert report["healthy"] is False
    assert report["dead_letters"] == {"events": 1, "actions": 0}
    assert any("halo-tickets" in p for p in report["problems"])
    assert "UNHEALTHY" in render_text(report)


def _run_status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "status", *extra, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cfg.parent,
    )


def _config(tmp_path: Path, db: Path) -> Path:
    """The two jobs `_seed` records, configured: a job no longer in the config is not counted."""
    cfg = tmp_path / "daemon.toml"
    cfg.write_text(
        f'[daemon]\ndatabase = "{db.as_posix()}"\n\n'
        '[upstreams.halo]\ntenant_url = "https://halo.example.com"\nclient_id = "c"\n'
        'client_secret = "a-literal-client-secret"\n\n'
        '[upstreams.blesta]\nurl = "https://billing.example.com/api"\nuser = "u"\n'
        'key = "a-literal-blesta-key"\n\n'
        '[[sync]]\nname = "halo-tickets"\nupstream = "halo"\nresource = "tickets"\n'
        'every = "1h"\n\n'
        '[[sync]]\nname = "blesta-clients"\nupstream = "blesta"\nresource = "clients"\n'
        'every = "1h"\n'
    )
    cfg.chmod(0o600)
    return cfg


@needs_config
@pytest.mark.parametrize(
    ("fail", "dead", "code"), [(False, False, 0), (True, False, 1), (False, True, 1)]
)
async def test_status_command_exit_codes(
    tmp_path: Path, db_path: Path, clock: FakeClock, fail: bool, dead: bool, code: int
) -> None:
    await _seed(db_path, clock, fail=fail, dead=dead)
    cfg = _config(tmp_path, db_path)
    proc = _run_status(cfg, "--json")
    assert proc.returncode == code, proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is (code == 0)
    assert {j["job"] for j in report["jobs"]} >= {"blesta-clients", "halo-tickets"}
    text = _run_status(cfg)
    assert text.returncode == code
    assert "blesta-clients" in text.stdout


@needs_config
def test_status_command_missing_database(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    proc = _run_status(_config(tmp_path, db))
    assert proc.returncode == 1
    assert "does not exist" in proc.stdout
    assert not db.exists()  # status never creates the file


def test_status_help_documents_exit_codes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Exit status" in text and "no dead letters" in text
