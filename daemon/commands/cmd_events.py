"""`daemon events list|show|replay`: inspect the webhook inbox and re-run what failed.

`list` and `show` open the database read-only (safe beside the running service). `replay`
writes: the events become `pending` again and their `dead` or `failed` actions are tried again
(looking first where an earlier attempt may have reached the upstream), while actions already
`sent` stay sent (no SMS or ticket twice). The plan each event was given is kept — replay
carries out what was decided, it does not re-evaluate the rules — so an action that failed at
planning (a template error) stays dead with its reason: fix the rule, and new events get the
new plan. An event being handled right now (it holds a lease) is refused. A running service
picks the replayed events up within its dispatch `poll` interval.

Exit codes: 0 done; 1 an id does not exist, the database is missing, unreadable or from a
newer daemon; 2 bad usage (an id or `--limit` that is not a whole number from 1 to 2**63-1)
or config (including a `daemon.database` that is not an SQLite file). With `--json`, a failure
is one JSON object on stdout (`error`, `error_type`, `exit`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.clock import SystemClock
from daemon.commands.common import bounded_int, failure, safe_lines, terminal_safe
from daemon.logs import redact_text

if TYPE_CHECKING:
    from daemon.store import ActionRow, EventRow

ORDER = 40
STATUSES = ("pending", "done", "ignored", "failed", "dead")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "events",
        parents=[common],
        help="inspect the webhook inbox; replay failed or dead events",
        description="List, show and replay webhook events. Replay re-runs an event's dead or "
        "failed actions; actions already sent stay sent.",
    )
    events = p.add_subparsers(dest="events_command", metavar="COMMAND")
    events.required = True
    ls = events.add_parser("list", parents=[common], help="newest events first")
    ls.add_argument("--status", choices=STATUSES, help="only events with this status")
    ls.add_argument(
        "--limit",
        type=bounded_int(1),
        default=50,
        metavar="N",
        help="at most this many, 1 or more (default 50)",
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=handle)
    show = events.add_parser("show", parents=[common], help="one event: payload, plan, actions")
    show.add_argument("id", type=bounded_int(1), metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=handle)
    replay = events.add_parser(
        "replay", parents=[common], help="re-run events' dead or failed actions"
    )
    which = replay.add_mutually_exclusive_group(required=True)  # argparse says "one of"
    which.add_argument("ids", nargs="*", type=bounded_int(1), metavar="ID", default=[])
    which.add_argument("--dead", action="store_true", help="every dead event")
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from daemon.commands.common import check_database, load_cli_settings

    settings = load_cli_settings(args.config, log_level="warning")
    database = Path(settings.daemon.database)
    # Replay writes, but a database it would have to create has nothing to replay.
    check_database(database, must_exist=True)
    code, out = asyncio.run(_run(args, database))
    if args.json:
        print(redact_text(json.dumps(out, indent=2, default=str, ensure_ascii=False)))
    elif code != 0 and "error" in out:  # a not-found is a message for people, on stderr
        print(redact_text(f"error: {out['error']}"), file=sys.stderr)
    else:
        print(redact_text(_render(args.events_command, out)))
    return code


async def _run(args: argparse.Namespace, database: Path) -> tuple[int, Any]:
    from daemon.store import Store

    clock = SystemClock()
    read_only = args.events_command != "replay"
    async with Store.open(database, clock=clock, read_only=read_only) as store:
        if args.events_command == "list":
            rows = await store.list_events(args.status, limit=args.limit)
            return 0, [_event(r) for r in rows]
        if args.events_command == "show":
            row = await store.get_event(args.id)
            if row is None:
                return 1, failure(f"no event with id {args.id}", "NotFound", 1)
            actions = await store.actions_for_event(row.id)
            return 0, {**_event(row, full=True), "actions": [_action(a) for a in actions]}
        if args.dead:
            return 0, {"replayed": await store.reset_dead()}
        found = await store.reset_events(args.ids)
        missing = len(set(args.ids)) - found
        if missing:
            message = f"{missing} of the ids do not exist ({found} replayed)"
            return 1, failure(message, "NotFound", 1, replayed=found)
        return 0, {"replayed": found}


def _event(row: EventRow, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "received_at": row.received_at.isoformat(),
        "kind": row.kind,
        "sender": row.sender,
        "via": row.via,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
    }
    if full:
        out["dedupe_key"] = row.dedupe_key
        out["next_attempt_at"] = row.next_attempt_at.isoformat() if row.next_attempt_at else None
        out["payload"] = _loads(row.payload)
        out["plan"] = _loads(row.plan) if row.plan else None
    return out


def _action(a: ActionRow) -> dict[str, Any]:
    return {
        "id": a.id,
        "rule": a.rule,
        "kind": a.kind,
        "status": a.status,
        "attempts": a.attempts,
        "upstream_ref": a.upstream_ref,
        "last_error": a.last_error,
        "request": _loads(a.request) if a.request else None,
        # What the upstream answered (a sent action), or whether a failed one may have acted
        # (`uncertain`); `found_in` / `looked_first` say how an uncertain send was settled.
        "response": _loads(a.response) if a.response else None,
        "attempt_started_at": a.attempt_started_at.isoformat() if a.attempt_started_at else None,
        "created_at": a.created_at.isoformat(),
        "done_at": a.done_at.isoformat() if a.done_at else None,
    }


def _outcome_note(a: dict[str, Any]) -> str | None:
    """One line on how an action whose first outcome was in doubt was settled, if it was."""
    response = a.get("response")
    if not isinstance(response, dict):
        return None
    if response.get("found_in"):
        return (
            f"found in the {response['found_in']}: an earlier attempt had done it, not sent again"
        )
    if response.get("looked_first"):
        return "looked first after an uncertain attempt, found nothing, then sent"
    if response.get("uncertain") is True and a["status"] != "sent":
        return "the last attempt may have reached the upstream: the next one looks first"
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _render(command: str, out: Any) -> str:
    if command == "list":
        if not out:
            return "no events"
        header = ("id", "received", "kind", "sender", "via", "status", "tries", "error")
        rows = [
            tuple(terminal_safe(cell) for cell in (
                str(e["id"]), e["received_at"][:19], e["kind"], e["sender"] or "-", e["via"],
                e["status"], str(e["attempts"]), (e["last_error"] or "")[:60]))
            for e in out
        ]  # fmt: skip
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *rows]]  # fmt: skip
        return "\n".join(lines)
    if command == "show":
        lines = [
            f"event {out['id']}  {out['kind']}  {out['status']}  (via {out['via']}, "
            f"{out['attempts']} attempts)",
            f"  received {out['received_at']}  sender {out['sender'] or '-'}",
            f"  dedupe key {out['dedupe_key']}",
        ]
        if out["last_error"]:
            lines.append(f"  last error: {out['last_error']}")
        plan = out.get("plan") or {}
        for skipped in plan.get("skipped", []):
            lines.append(f"  skipped rule {skipped['rule']}: {skipped['reason']}")
        for a in out["actions"]:
            ref = f" -> {a['upstream_ref']}" if a["upstream_ref"] else ""
            lines.append(f"  action {a['id']} {a['rule']} {a['kind']} {a['status']}{ref}"
                         f" ({a['attempts']} attempts)")  # fmt: skip
            if a["last_error"]:
                lines.append(f"    error: {a['last_error']}")
            if note := _outcome_note(a):
                lines.append(f"    {note}")
        return safe_lines(lines)
    return json.dumps(out, indent=2, default=str, ensure_ascii=False)
