"""Issue 14 §4: one bad job never takes the others down — through the real CLI.

A hostile Blesta serves records JSON cannot hold (a lone surrogate, NaN, nesting 2,000 deep)
while an honest Halo runs beside it in the same `run-once`: the bad job fails alone and says
why, the other completes, the summary (and `--json`) is printed, no traceback reaches the user,
and no `sync_runs` row is left `running`. SIGTERM is handled like SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import SECRET
from tests.hostile.servers import Script, blesta_app, clients, halo_app, serve

DEEP = '{"response": [{"id": "1", "deep": ' + "[" * 2000 + "]" * 2000 + "}]}"


def _config(tmp_path: Path, blesta_url: str, halo_url: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f"""
[daemon]
database = "{tmp_path / "state.db"}"

[upstreams.blesta]
url = "{blesta_url}/api"
user = "sync"
key = "{SECRET}"
max_retries = 0

[upstreams.halo]
tenant_url = "{halo_url}"
client_id = "c"
client_secret = "{SECRET}"
max_retries = 0

[[sync]]
name = "blesta-clients"
upstream = "blesta"
resource = "clients"
every = "1h"

[[sync]]
name = "halo-tickets"
upstream = "halo"
resource = "tickets"
every = "1h"
"""
    )
    path.chmod(0o600)
    return path


async def _cli(*args: str, signal_when: Any = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"},
    )  # fmt: skip
    if signal_when is not None:
        await asyncio.wait_for(signal_when.wait(), timeout=30)
        proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _runs(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT job, status, error FROM sync_runs ORDER BY id").fetchall()


@pytest.fixture
async def halo_url() -> AsyncIterator[str]:
    async with serve(halo_app(Script(rows=clients(30)))) as url:
        yield url


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (DEEP, "nested too deeply"),
        ('{"response": [{"id": "7", "amount": NaN}]}', "record '7'"),
    ],
    ids=["nested-2000", "nan"],
)
async def test_a_bad_record_fails_its_job_alone(
    tmp_path: Path, halo_url: str, raw: str, error: str
) -> None:
    script = Script(rows=clients(5), raw={1: raw})
    async with serve(blesta_app(script)) as blesta_url:
        config = _config(tmp_path, blesta_url, halo_url)
        code, out, err = await _cli("--config", str(config), "run-once", "--json")
    assert code == 1
    assert "Traceback" not in err and "ExceptionGroup" not in err
    summary = {j["job"]: j for j in json.loads(out)["jobs"]}
    assert summary["blesta-clients"]["status"] == "failed"
    assert error in summary["blesta-clients"]["error"]
    assert summary["halo-tickets"]["status"] == "ok" and summary["halo-tickets"]["fetched"] == 30
    statuses = {job: status for job, status, _ in _runs(tmp_path / "state.db")}
    assert statuses == {"blesta-clients": "failed", "halo-tickets": "ok"}


@pytest.mark.parametrize(
    ("records", "stored"),
    [
        ('{"id": "8", "first_name": "Zo\\ud800e"}', {"8": "Zo\ufffde"}),
        # Found by a hostile-upstream probe: an id holding one could not be bound (an untyped
        # UnicodeEncodeError), so its page failed on every run and took the page's other
        # records and every later page with it.
        ('{"id": "8\\ud800", "first_name": "Zoe"}, {"id": "9"}', {"8\ufffd": "Zoe", "9": None}),
    ],
)
async def test_a_lone_surrogate_is_stored_as_the_replacement_character(
    tmp_path: Path, halo_url: str, records: str, stored: dict[str, str | None]
) -> None:
    raw = '{"response": [' + records + "]}"
    async with serve(blesta_app(Script(rows=clients(len(stored)), raw={1: raw}))) as blesta_url:
        config = _config(tmp_path, blesta_url, halo_url)
        code, out, err = await _cli("--config", str(config), "run-once", "blesta-clients")
    assert code == 0, out + err
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = conn.execute("SELECT id, data FROM blesta_clients").fetchall()
    assert {rid: json.loads(data).get("first_name") for rid, data in rows} == stored


async def test_sigterm_records_runs_cancelled_and_prints_the_summary(
    tmp_path: Path, halo_url: str
) -> None:
    reached, release = asyncio.Event(), asyncio.Event()
    script = Script(rows=clients(45))

    async def hold(request: Any, handler: Any) -> Any:
        if request.query.get("page") == "2":
            reached.set()
            await release.wait()  # page 2 never comes until the test is done
        return await handler(request)

    app = blesta_app(script)
    app.middlewares.append(hold_middleware(hold))
    try:
        async with serve(app) as blesta_url:
            config = _config(tmp_path, blesta_url, halo_url)
            code, out, err = await _cli(
                "--config",
                str(config),
                "run-once",
                "blesta-clients",
                "--json",
                signal_when=reached,
            )
    finally:
        release.set()
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert [j["status"] for j in summary["jobs"]] == ["cancelled"]
    assert _runs(tmp_path / "state.db") == [("blesta-clients", "cancelled", "cancelled")]


async def test_run_once_marks_a_dead_processs_runs_failed(tmp_path: Path, halo_url: str) -> None:
    async with serve(blesta_app(Script(rows=clients(3)))) as blesta_url:
        config = _config(tmp_path, blesta_url, halo_url)
        assert (await _cli("--config", str(config), "run-once", "halo-tickets"))[0] == 0
        with sqlite3.connect(tmp_path / "state.db") as conn:
            conn.execute(
                "INSERT INTO sync_runs (job, started_at, status, owner) VALUES "
                "('blesta-clients', '2025-01-01T00:00:00.000000Z', 'running', ?)",
                (f"{os.uname().nodename}:999999999:1",),
            )
        code, _, err = await _cli("--config", str(config), "run-once", "halo-tickets")
    assert code == 0, err
    runs = _runs(tmp_path / "state.db")
    assert ("blesta-clients", "failed", "interrupted") in runs
    assert all(status != "running" for _, status, _ in runs)


def hold_middleware(fn: Any) -> Any:
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> Any:
        return await fn(request, handler)

    return middleware
