"""`daemon sandbox --run-once`: the whole product against the simulators, once, and a report.

1. Every sync job runs once (`run-once`'s wiring), filling the database and the contacts index.
2. The service starts (listener, dispatcher, keeper...) exactly as `daemon run` would; the keeper
   subscribes the listener at the simulated PBX.
3. Scripted SMS arrive at the PBX from a synced client's phone: "hello" (answered by the demo
   `hello` rule with that client's record), then a problem report (a Halo ticket), then a
   follow-up (a note on that ticket). The PBX posts each to the daemon's real listener.
4. It waits — bounded — for the reply, the ticket and the note, prints what happened, stops the
   service cleanly and exits 0; 1 if a sync failed or anything did not arrive in time.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import anyio

from daemon.clock import SystemClock
from daemon.commands.cmd_run_once import exit_code, print_summary, summary_rows
from daemon.config import Settings
from daemon.logs import redact_text
from daemon.sandbox.orchestra import OWN_NUMBER, Sandbox
from daemon.service import Service
from daemon.sync.batch import burst

WAIT = 30.0  # seconds for each step to show up
SCRIPT = ("hello", "My internet has been down since this morning", "Still down, please call me")


async def tour(sandbox: Sandbox, settings: Settings, *, as_json: bool) -> int:
    clock = SystemClock()
    results = await burst(settings, [], clock=clock)
    if not as_json:
        print_summary(results, as_json=False)
    report: dict[str, Any] = {"sync_ok": exit_code(results) == 0}
    service = Service(settings, clock=clock, config_path=sandbox.config_path,
                      handle_signals=False)  # fmt: skip
    ns, halo = sandbox.netsapiens, sandbox.halo
    ok = False
    async with anyio.create_task_group() as tg:
        await tg.start(service.serve)
        try:
            await _wait_for(lambda: ns.live_subscriptions("message") or None)
            phone, name = _known_client(settings)
            sender, ours = phone.lstrip("+"), OWN_NUMBER.lstrip("+")
            report.update(sender=phone, client=name)
            await ns.inbound_sms(sender, ours, SCRIPT[0])
            report["reply"] = await _wait_for(lambda: _reply(ns, sender))
            await ns.inbound_sms(sender, ours, SCRIPT[1])
            ticket = await _wait_for(lambda: _ticket(halo))
            report["ticket"] = {"id": ticket["id"], "summary": ticket.get("summary")}
            await ns.inbound_sms(sender, ours, SCRIPT[2])
            note = await _wait_for(lambda: _note(halo, ticket["id"]))
            report["note"] = {"id": note["id"], "ticket_id": ticket["id"]}
            ok = report["sync_ok"]
        except TimeoutError:
            report["error"] = f"a step did not complete within {WAIT:g}s (see the log above)"
        finally:
            service.request_shutdown()
    report["tables"] = _tables(settings)
    report["ok"] = ok
    if as_json:
        out = {"jobs": summary_rows(results), **report}
        print(redact_text(json.dumps(out, indent=2, default=str)))
    else:
        _print(report, settings)
    return 0 if ok else 1


async def _wait_for(found: Any) -> Any:
    """Poll the simulators' state (bounded): they live in this process, and have no events to
    wait on for "a ticket exists"."""
    with anyio.fail_after(WAIT):
        while (value := found()) is None:  # noqa: ASYNC110 - polling another component's state
            await anyio.sleep(0.05)
    return value


def _known_client(settings: Settings) -> tuple[str, str]:
    """A synced Blesta client with a phone: the sender of the scripted SMS."""
    with sqlite3.connect(settings.daemon.database) as conn:
        row = conn.execute(
            "SELECT phone, name FROM contacts WHERE table_name = 'blesta_clients' "
            "ORDER BY record_id LIMIT 1"
        ).fetchone()
    if row is None:
        raise TimeoutError("no synced client has a phone number")
    return str(row[0]), str(row[1] or "")


def _reply(ns: Any, sender: str) -> str | None:
    for sent in ns.sent:
        if str(sent.get("destination")) == sender:
            return str(sent.get("message"))
    return None


def _ticket(halo: Any) -> dict[str, Any] | None:
    for ticket in halo.table("Tickets"):
        if str(ticket.get("summary", "")).startswith("SMS from"):
            return dict(ticket)
    return None


def _note(halo: Any, ticket_id: Any) -> dict[str, Any] | None:
    for action in halo.table("Actions"):
        if action.get("ticket_id") == ticket_id and SCRIPT[2] in str(action.get("note", "")):
            return dict(action)
    return None


def _tables(settings: Settings) -> dict[str, int]:
    names = [j.table for j in settings.sync]
    with sqlite3.connect(settings.daemon.database) as conn:
        return {
            n: conn.execute(f'SELECT COUNT(*) FROM "{n}" WHERE deleted_at IS NULL').fetchone()[0]
            for n in names
        }


def _print(report: dict[str, Any], settings: Settings) -> None:
    print("\nrecords per table:")
    for table, count in report["tables"].items():
        print(f"  {table:<20} {count}")
    if "sender" in report:
        print(f"\nSMS from {report['sender']} ({report['client']}): {SCRIPT[0]!r}")
    if "reply" in report:
        print(f"  reply: {report['reply']!r}")
    if "ticket" in report:
        print(f"SMS: {SCRIPT[1]!r}\n  Halo ticket #{report['ticket']['id']}: "
              f"{report['ticket']['summary']!r}")  # fmt: skip
    if "note" in report:
        print(f"SMS: {SCRIPT[2]!r}\n  note #{report['note']['id']} on ticket "
              f"#{report['note']['ticket_id']}")  # fmt: skip
    if "error" in report:
        print(f"error: {report['error']}")
    print(f"database: {settings.daemon.database}")
