"""The leak scan itself (`tests/conftest.py`, `leaks.py`): it sees what it claims to see —
every spelling of a secret, subprocess output however it is read, a daemon command's output
sent to DEVNULL, a secret in a database — and leaves a subscription's post URL alone."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, quote_plus

from tests.reliability import leaks, secrets

MARKER = "leak-scan-marker-5f0c"  # not a secret: proves the text reached the collector
FAKE = {"u": 'fa/+=é"\\ ke y&%7!'}  # a secret with every character an encoding changes


def _table() -> dict[str, str]:
    user, secret = next(iter(FAKE.items()))
    return dict.fromkeys(secrets.spellings(user, secret), secret)


def test_every_spelling_is_found() -> None:
    user, secret = next(iter(FAKE.items()))
    forms = [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(json.dumps(secret))[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe="").lower(),
        base64.b64encode(secret.encode()).decode(),
        "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode(),
    ]
    for form in forms:
        found = leaks.Findings()
        found.add("here", f"before {form} after", _table())
        assert found.items, form
        assert "here" in found.report()


def test_the_list_holds_the_suites_secrets() -> None:
    known = {s for _, s in secrets.fixed()}
    assert {"demo-blesta-key", "halo-secret", "ns-secret", "demo-password"} <= known
    assert all(len(s) >= secrets.MIN_LENGTH for s in known)
    assert secrets.webhook_secrets() <= known


async def test_subprocess_output_reaches_the_collector() -> None:
    leaks.COLLECTOR.drain()
    code = f"import sys; print('{MARKER}-out'); print('{MARKER}-err', file=sys.stderr)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await proc.communicate()
    subprocess.run([sys.executable, "-c", code.replace("out", "run")], capture_output=True)
    with subprocess.Popen(
        [sys.executable, "-c", code.replace("out", "line")], stdout=subprocess.PIPE, text=True
    ) as popen:
        assert popen.stdout is not None
        popen.stdout.readline()
    text = "\n".join(content for _, content in leaks.COLLECTOR.drain())
    for part in ("out", "err", "run", "line"):
        assert f"{MARKER}-{part}" in text, part


def test_a_daemon_command_sent_to_devnull_is_still_read() -> None:
    before = len(leaks.COLLECTOR.files)
    subprocess.run(
        [sys.executable, "-m", "daemon", "--help"], stdout=subprocess.DEVNULL, check=True
    )
    (what, path) = leaks.COLLECTOR.files[before]
    assert "DEVNULL" in what and "usage" in path.read_text()


def test_a_secret_in_a_database_is_found_a_webhook_secret_too() -> None:
    hook = sorted(secrets.webhook_secrets())[0]
    with tempfile.TemporaryDirectory() as tmp:  # outside pytest's tmp: the session scans that
        db = Path(tmp) / "state.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE subscriptions (id TEXT, post_url TEXT)")
        conn.execute("CREATE TABLE actions (id INTEGER, request TEXT)")
        conn.execute("INSERT INTO subscriptions VALUES ('s', ?)", ("https://x/[REDACTED]",))
        conn.commit()
        assert not leaks.scan_database(db).items
        basic = base64.b64encode(b"sync:demo-blesta-key").decode()
        conn.execute("INSERT INTO actions VALUES (1, ?)", (f'{{"auth": "Basic {basic}"}}',))
        conn.execute("INSERT INTO subscriptions VALUES ('t', ?)", (f"https://x/{hook}",))
        conn.commit()
        conn.close()
        found = leaks.scan_database(db)
    report = found.report()
    assert "demo-blesta-key" in report and hook in report and "(bytes)" in report
