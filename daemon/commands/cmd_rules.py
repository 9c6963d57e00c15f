"""`daemon rules test EVENT.json [--model message] [--json] [--now TIME]`: a dry run of the rules.

Parses the file exactly as the webhook listener parses a delivery of that model
(`parse_payload`, the config's `default_region`), looks each sender up in the configured
database read-only, evaluates the rules as the dispatcher would, and prints which rules matched,
what was looked up and each rendered SMS or ticket. Nothing is sent and nothing is written.

A missing or unreadable database means "no contact" (with a note), never an error, so rules can
be tried before the first sync or on another machine. Exit status: 0 when it ran (even if no
rule matched), 1 when a planned action has an error (a template that fails, nobody to reply
to), 2 for an invalid config or an EVENT file that cannot be read or holds no event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from daemon.clock import Clock, SystemClock
from daemon.commands.common import safe_lines
from daemon.config.models import NETSAPIENS_MODELS
from daemon.errors import StoreError, shorten
from daemon.rules.engine import RuleSet, Trace
from daemon.rules.plan import Plan
from daemon.store.contacts import Contact
from daemon.webhooks.event import Event, PayloadError
from daemon.webhooks.events import parse_payload

ORDER = 40
EXIT_OK, EXIT_ACTION_ERROR, EXIT_USAGE = 0, 1, 2
MARKS = {"acted": "+", "error": "!", "not reached": "-"}


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "rules",
        parents=[common],
        help="try the [[rules]] on a webhook payload, sending nothing",
        description="Work with the [[rules]] of the configuration.",
    )
    rules_sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rules_sub.required = True
    t = rules_sub.add_parser(
        "test",
        parents=[common],
        help="which rule matches an event, and what it would send",
        description="Parse EVENT (a NetSapiens webhook body: one JSON object or an array) as "
        "the listener would, look the sender up in the database (read-only; a missing "
        "database means no contact), evaluate the rules and print which matched and the "
        "rendered SMS or ticket. Sends nothing, writes nothing. Exit 0 when it ran, 1 when a "
        "planned action has an error, 2 for an invalid config or an unreadable EVENT.",
    )
    t.add_argument("event", metavar="EVENT.json", help="the payload file ('-' for stdin)")
    t.add_argument(
        "--model",
        default="message",
        choices=NETSAPIENS_MODELS,
        help="the NetSapiens model the payload is (the listener knows it from the URL); "
        "default: message",
    )
    t.add_argument(
        "--now",
        metavar="TIME",
        help="evaluate as if it were TIME (ISO 8601; without an offset: in daemon.timezone), "
        "e.g. to see the after-hours rules; default: now",
    )
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(handler=handle_test)


@dataclass(frozen=True)
class Lookup:
    """What was looked up for one event, and what came back."""

    phone: str | None
    contact: Contact | None
    note: str | None


def _fail(message: str, *, as_json: bool) -> int:
    """Bad input (EVENT, --now): the message on stderr, with --json the failure object on
    stdout too; exit 2."""
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        from daemon.commands.common import failure, print_failure

        print_failure(failure(message, "UsageError", EXIT_USAGE))
    return EXIT_USAGE


def _read_event_file(name: str, limit: int) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with Path(name).open("rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(
            f"larger than http.max_body_bytes ({limit} bytes): the listener would refuse it"
        )
    return data


def _parse_now(text: str | None, zone: ZoneInfo, clock: Clock) -> datetime:
    if text is None:
        return clock.now()
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=zone)


def handle_test(args: argparse.Namespace) -> int:
    from daemon.commands.common import load_cli_settings

    settings = load_cli_settings(args.config, log_level="warning")
    ruleset = RuleSet.compile(
        settings.rules,
        timezone=settings.daemon.timezone,
        business_hours=settings.daemon.business_hours,
    )
    clock = SystemClock()
    try:
        now = _parse_now(args.now, ruleset.zone, clock)
    except ValueError as exc:
        return _fail(f"--now: {exc} (expected ISO 8601, e.g. 2025-01-06T20:30)", as_json=args.json)
    try:
        body = _read_event_file(args.event, settings.http.max_body_bytes)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return _fail(f"cannot read {args.event}: {reason}", as_json=args.json)
    try:
        parsed = parse_payload(args.model, body, default_region=settings.daemon.default_region)
    except PayloadError as exc:
        return _fail(f"{args.event}: {exc}", as_json=args.json)
    rejected = [{"index": r.index, "reason": r.reason} for r in parsed.rejected]
    if not parsed.events:
        detail = "; ".join(f"element {r['index']}: {r['reason']}" for r in rejected) or "empty"
        return _fail(f"{args.event}: no {args.model} event in it ({detail})", as_json=args.json)
    database = Path(settings.daemon.database)
    lookups = asyncio.run(lookup_all(database, parsed.events, clock=clock))
    results = []
    for event, lookup in zip(parsed.events, lookups, strict=True):
        plan, traces = ruleset.explain(event, contact=lookup.contact, now=now)
        ctx = ruleset.context(event, contact=lookup.contact, now=now)
        results.append(_event_report(event, lookup, plan, traces, ctx))
    report = {
        "database": str(database),
        "model": args.model,
        "timezone": settings.daemon.timezone,
        "events": results,
        "rejected": rejected,
        "sent": False,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_text(report))
    failed = any(a["error"] for r in results for a in r["actions"])
    return EXIT_ACTION_ERROR if failed else EXIT_OK


def database_note(database: Path) -> str | None:
    """Why the database cannot be read (so no contact is looked up), or None."""
    from daemon.config.checks import database_problem

    if not database.exists():
        return f"database {database} does not exist: no contact looked up"
    problem = database_problem(database)  # refuses a FIFO before SQLite could block on it
    if problem is not None:
        return f"database {database} {problem}: no contact looked up"
    return None


async def lookup_all(database: Path, events: Iterable[Event], *, clock: Clock) -> list[Lookup]:
    """Each event's sender looked up read-only; a database that is missing or cannot be read
    gives "no contact" with a note saying why, never an error."""
    from daemon.store import Store

    phones = [e.from_number for e in events]
    found: dict[str, Contact | None] = {}
    note = await asyncio.to_thread(database_note, database)
    if note is None and any(phones):
        try:
            async with Store.open(database, clock=clock, read_only=True) as store:
                for phone in dict.fromkeys(p for p in phones if p):
                    found[phone] = await store.lookup_contact(phone)
        except (StoreError, sqlite3.Error, OSError) as exc:
            note = f"cannot read database {database} ({exc}): no contact looked up"
            found = {}
    none = "the event has no sender phone number: nothing to look up"
    return [
        Lookup(phone, found.get(phone), note) if phone else Lookup(None, None, none)
        for phone in phones
    ]


def _event_report(
    event: Event, lookup: Lookup, plan: Plan, traces: list[Trace], ctx: dict[str, Any]
) -> dict[str, Any]:
    fields = {k: v for k, v in event.as_context().items() if k != "raw"}
    contact = lookup.contact
    return {
        "event": fields,
        "lookup": {
            "phone": lookup.phone,
            "found": contact is not None,
            "contact": None if contact is None else asdict(contact),
            "note": lookup.note,
        },
        "now": ctx["now"].isoformat(),
        "business_hours": ctx["business_hours"],
        "rules": [asdict(t) for t in traces],
        "matched": plan.matched,
        "actions": [asdict(a) for a in plan.actions],
    }


def _short(value: Any, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return shorten(text, limit)


def _event_lines(index: int, total: int, r: dict[str, Any]) -> list[str]:
    e = r["event"]
    lines = [f"event {index} of {total}: {e['kind']}  ({e['dedupe_key']})"]
    parts = [
        f"{label} {e[key]}"
        for label, key in (
            ("from", "from"),
            ("to", "to"),
            ("session", "session_id"),
            ("domain", "domain"),
            ("user", "user"),
            ("duration", "duration"),
        )
        if e.get(key) is not None
    ]
    if parts:
        lines.append("  " + ", ".join(parts))
    if e.get("body") is not None:
        lines.append(f"  body: {_short(e['body'])!r}")
    lookup = r["lookup"]
    if lookup["found"]:
        c = lookup["contact"]
        name = f' "{c["name"]}"' if c["name"] else ""
        lines.append(f"lookup: {lookup['phone']} → {c['table']} #{c['record_id']}{name}")
        lines.append(f"  client: {_short(c['data'])}")
    elif lookup["note"]:
        lines.append(f"lookup: {lookup['note']}")
    else:
        lines.append(f"lookup: {lookup['phone']} → no contact")
    hours = "open" if r["business_hours"] else "closed"
    lines.append(f"now: {r['now']}  business_hours: {hours}")
    lines.append("rules:")
    width = max((len(t["rule"]) for t in r["rules"]), default=0)
    if not r["rules"]:
        lines.append("  (no rules configured)")
    for t in r["rules"]:
        mark = MARKS.get(t["outcome"], ".")
        detail = f": {t['detail']}" if t["detail"] else ""
        lines.append(f"  {mark} {t['rule']:<{width}}  {t['outcome']}{detail}")
    lines.append("actions:" if r["actions"] else "actions: none (the event would be ignored)")
    for a in r["actions"]:
        lines += _action_lines(a)
    return lines


def _action_lines(a: dict[str, Any]) -> list[str]:
    head = f"  {a['rule']} → {a['kind']}  (key {a['key']})"
    if a["error"]:
        return [head, f"    ERROR: {a['error']}"]
    lines = [head]
    if a["sms"]:
        s = a["sms"]
        session = f", session {s['session_id']}" if s["session_id"] else ""
        lines.append(f"    from {s['from_number']} to {s['to_number']}{session}")
        lines.append(f"    text: {s['text']}")
    if a["ticket"]:
        t = a["ticket"]
        for key, value in t["ticket"].items():
            lines.append(f"    {key}: {_short(value)}")
        thread = f"yes (at most {t['max_notes']} notes)" if t["thread"] else "no"
        lines.append(f"    thread: {thread}")
        lines.append(f"    note (when added to an open ticket): {_short(t['note'])}")
    if a["kind"] == "ignore":
        lines.append("    recorded; nothing is sent")
    return lines


def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []
    events = report["events"]
    for i, r in enumerate(events, 1):
        if lines:
            lines.append("")
        lines += _event_lines(i, len(events), r)
    for rej in report["rejected"]:
        lines.append(f"element {rej['index']} skipped: {rej['reason']}")
    lines += ["", "dry run: nothing was sent (cooldowns and the loop guard are not applied here)"]
    return safe_lines(lines)
