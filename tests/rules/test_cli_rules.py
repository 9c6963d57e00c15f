"""`daemon rules test` end to end: a subprocess, a real 0600 config and a real database."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.store import ContactEntry, Store

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York
MESSAGE = {
    "id": "m1",
    "timestamp": "2025-01-06T14:59:00+00:00",
    "domain": "acme",
    "direction": "orig",
    "from-number": "15551230000",
    "dialed": "15559870000",
    "terminating-user-id": "101",
    "messagesession-id": "sess-1",
    "text": "Balance please",
}
CONFIG = """
[daemon]
database = "state.db"
timezone = "America/New_York"

[daemon.business_hours]
mon = "09:00-17:00"

[upstreams.netsapiens]
api_url = "https://pbx.example.com"
client_id = "ns-client"
client_secret = "literal-ns-secret-value"
username = "api@example.com"
password = "literal-ns-password"

[upstreams.halo]
tenant_url = "https://halo.example.com"
client_id = "halo-client"
client_secret = "literal-halo-secret"

[[rules]]
name = "stop"
on = "message.*"
match = { body = "(?i)^stop$" }
action = "ignore"

[[rules]]
name = "balance"
on = "message.received"
match = { body = "(?i)^\\\\s*balance\\\\b" }
action = "sms_reply"
text = "Hi {{ client.first_name | default('there') }}, your balance is {{ client.balance }}."
cooldown = "10m"

[[rules]]
name = "after-hours"
on = "message.received"
when = "not business_hours"
action = "sms_reply"
text = "Thanks, we'll reply when we open."
continue = true

[[rules]]
name = "sms-to-ticket"
on = "message.received"
action = "halo_ticket"
thread = true
ticket.summary = "SMS from {{ contact.name or event.from }}"
ticket.details = "{{ event.body }}"
ticket.tickettype_id = 1

[[rules]]
name = "missed-call"
on = "call.missed"
action = "sms_reply"
text = "Sorry we missed your call."
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_event(tmp_path: Path, payload: Any, name: str = "event.json") -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


async def make_database(path: Path) -> None:
    """A database as a sync leaves it: a client record and its contact entry."""
    async with Store.open(path, clock=FakeClock(T0)) as store:
        await store.ensure_record_table("blesta_clients")
        record = {"id": "17", "first_name": "Ada", "last_name": "Lovelace", "balance": "12.50"}
        await store.upsert_page("blesta_clients", [("17", record)], run_started_at=T0)
        await store.replace_contacts(
            "blesta_clients", [ContactEntry("+15551230000", "17", "Ada Lovelace")]
        )


def rules_test(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "rules", "test", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def synced(tmp_path: Path) -> Path:
    await make_database(tmp_path / "state.db")
    return write_config(tmp_path)


async def test_a_known_sender_gets_the_rendered_reply(synced: Path, tmp_path: Path) -> None:
    event = write_event(tmp_path, [MESSAGE])
    before = digest(tmp_path / "state.db")
    proc = rules_test(synced, str(event), "--now", "2025-01-06T10:00")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "event 1 of 1: message.received  (netsapiens:message:m1)" in out
    assert 'lookup: +15551230000 → blesta_clients #17 "Ada Lovelace"' in out
    assert "business_hours: open" in out
    assert "+ balance" in out and "- sms-to-ticket  not reached" in out
    assert "from 15559870000 to 15551230000, session sess-1" in out
    assert "text: Hi Ada, your balance is 12.50." in out
    assert "\ndry run: nothing was sent (cooldowns and the loop guard" in out
    assert "literal-ns-secret-value" not in out + proc.stderr
    assert digest(tmp_path / "state.db") == before  # read-only: nothing written


async def test_json(synced: Path, tmp_path: Path) -> None:
    event = write_event(tmp_path, [MESSAGE, {**MESSAGE, "id": "m2", "text": "my printer"}])
    proc = rules_test(synced, str(event), "--json", "--now", "2025-01-06T20:00-05:00")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sent"] is False and report["rejected"] == []
    first, second = report["events"]
    assert first["lookup"]["found"] is True
    assert first["lookup"]["contact"]["data"]["first_name"] == "Ada"
    assert first["business_hours"] is False and first["now"] == "2025-01-06T20:00:00-05:00"
    assert first["matched"] == ["balance"]
    (reply,) = first["actions"]
    assert reply["key"] == "netsapiens:message:m1:balance" and reply["error"] is None
    assert reply["sms"]["text"] == "Hi Ada, your balance is 12.50."
    assert second["matched"] == ["after-hours", "sms-to-ticket"]
    assert [r["outcome"] for r in second["rules"]] == [
        "match",
        "match",
        "acted",
        "acted",
        "not reached",
    ]
    ticket = second["actions"][1]["ticket"]
    assert ticket["ticket"] == {
        "summary": "SMS from Ada Lovelace",
        "details": "my printer",
        "tickettype_id": 1,
    }
    assert ticket["thread"] is True and ticket["note"] == "my printer"


def test_a_missing_database_means_no_contact(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    event = write_event(tmp_path, {**MESSAGE, "text": "hello"})
    proc = rules_test(config, str(event), "--now", "2025-01-06T10:00")
    assert proc.returncode == 0, proc.stderr
    assert f"lookup: database {tmp_path / 'state.db'} does not exist" in proc.stdout
    assert "summary: SMS from +15551230000" in proc.stdout
    assert not (tmp_path / "state.db").exists()  # not created either


def test_other_peoples_text_cannot_steer_the_terminal(tmp_path: Path) -> None:
    """Found by probing: the rendered ticket and SMS were printed with their control characters
    (an escape sequence, a carriage return, a right-to-left override) as they came."""
    config = write_config(tmp_path)
    text = "hi \x1b[2J\x1b]0;owned\x07 there\rFAKE LINE \u202eexe.txt \U0001f600"
    event = write_event(tmp_path, {**MESSAGE, "id": "m\x1b[31m9", "text": text})
    proc = rules_test(config, str(event), "--now", "2025-01-06T10:00")
    assert proc.returncode == 0, proc.stderr
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in proc.stdout
    assert (
        "hi \\x1b[2J\\x1b]0;owned\\x07 there\\rFAKE LINE \\u202eexe.txt \U0001f600" in proc.stdout
    )
    assert "(netsapiens:message:m\\x1b[31m9)" in proc.stdout


def test_a_template_error_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    event = write_event(tmp_path, MESSAGE)
    proc = rules_test(config, str(event), "--now", "2025-01-06T10:00")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "! balance" in proc.stdout
    assert "ERROR: text: undefined value: 'client' is undefined" in proc.stdout


@pytest.mark.parametrize("content", [b"not sqlite at all, just text" * 10, b""])
def test_an_unreadable_database_means_no_contact(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.db").write_bytes(content)
    config = write_config(tmp_path)
    event = write_event(tmp_path, {**MESSAGE, "text": "hello"})
    proc = rules_test(config, str(event))
    assert proc.returncode == 0, proc.stderr
    assert "no contact looked up" in proc.stdout
    assert (tmp_path / "state.db").read_bytes() == content


def test_another_model(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cdr = {
        "cdr-id": "c1",
        "call-orig-call-id": "o1",
        "call-term-call-id": "t1",
        "call-orig-caller-id": "15551230000",
        "call-dialed-number": "15559870000",
        "call-disposition": "No Answer",
        "call-talking-duration-seconds": "0",
    }
    event = write_event(tmp_path, [cdr])
    proc = rules_test(config, str(event), "--model", "cdr", "--json")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["events"]
    assert result["event"]["kind"] == "call.missed" and result["matched"] == ["missed-call"]
    sms = result["actions"][0]["sms"]
    # No raw message keys in a CDR: the E.164 numbers are used as they are.
    assert (sms["from_number"], sms["to_number"]) == ("+15559870000", "+15551230000")


def test_stdin(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "rules", "test", "-", "--config", str(config)],
        input=json.dumps({**MESSAGE, "text": "STOP"}),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "+ stop" in proc.stdout and "recorded; nothing is sent" in proc.stdout


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("{not json", "body is not JSON"),
        ("42", "not an object or an array"),
        ([{"id": "x", "from-number": "1555"}], "no message event in it (element 0: message has"),
        ([], "no message event in it (empty)"),
    ],
)
def test_an_unusable_event_file_exits_2(tmp_path: Path, payload: Any, words: str) -> None:
    config = write_config(tmp_path)
    proc = rules_test(config, str(write_event(tmp_path, payload)))
    assert proc.returncode == 2, proc.stdout
    assert words in proc.stderr and proc.stdout == ""


def test_a_missing_event_file_exits_2(tmp_path: Path) -> None:
    proc = rules_test(write_config(tmp_path), str(tmp_path / "nope.json"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and "No such file" in proc.stderr


def test_a_bad_now_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = rules_test(config, str(write_event(tmp_path, MESSAGE)), "--now", "teatime")
    assert proc.returncode == 2 and "--now" in proc.stderr


def test_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG.replace('on = "call.missed"', 'on = "call.mised"'))
    proc = rules_test(config, str(write_event(tmp_path, MESSAGE)))
    assert proc.returncode == 2
    assert "rules[4].on: unknown event kind 'call.mised'" in proc.stderr
