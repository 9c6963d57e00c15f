"""`daemon status [--json]`: health from the database, for people and for scripts.

Like `arq --check`, the exit code is the health check: 0 when the last finished run of every
job is ok and there are no dead letters, 1 otherwise (or when the database is missing), 2 for
bad configuration. It opens the database read-only, so it is safe beside a running service.
Subscription post URLs are shown with their secret segment masked, and the whole answer passes
the redactor (an old run's error text may predate a secret's registration).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.clock import Clock, SystemClock
from daemon.commands.common import safe_lines
from daemon.logs import mask_webhook_url, redact_text

ORDER = 30

EXIT_OK = 0
EXIT_UNHEALTHY = 1


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "status",
        parents=[common],
        help="last sync runs, inbox and action counts, dead letters, subscriptions",
        description="Show the last run of each sync job, inbox and action counts by status, "
        "dead letters and NetSapiens subscriptions, read from the database (read-only). "
        "Exit status (a health check, like `arq --check`): 0 when the last finished run of "
        "every job is ok and there are no dead letters; 1 when a job's last run failed or was "
        "cancelled, dead letters exist, or the database is missing, unreadable or from a newer "
        "daemon; 2 for invalid configuration (a daemon.database that is not an SQLite file "
        "included). With --json, a failure is one JSON object too (error, error_type, exit).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    # A failure's JSON object (cli.py prints it) says `healthy: false` too.
    p.set_defaults(handler=handle, json_failure={"healthy": False})


def handle(args: argparse.Namespace) -> int:
    from daemon.commands.common import (
        check_database,
        failure,
        load_cli_settings,
        missing_database,
        print_failure,
    )

    settings = load_cli_settings(args.config, log_level="warning")
    secrets = settings.secret_values()
    database = Path(settings.daemon.database)
    args.json_failure = {"database": str(database), "healthy": False}
    configured = [job.name for job in settings.sync]
    # The path's checks first, as every command makes them: one that cannot be a database
    # (under a regular file, a directory) is invalid configuration, not "missing".
    if not check_database(database, must_exist=False):
        # Not an error here but the health check's answer: not healthy (yet).
        message = missing_database(database)
        if args.json:
            print_failure(failure(message, "StoreError", EXIT_UNHEALTHY, **args.json_failure))
        else:
            print(message)
        return EXIT_UNHEALTHY
    report = asyncio.run(
        collect_status(database, clock=SystemClock(), jobs=configured, secrets=secrets)
    )
    print(redact_text(json.dumps(report, indent=2) if args.json else render_text(report), secrets))
    return EXIT_OK if report["healthy"] else EXIT_UNHEALTHY


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


async def collect_status(
    database: Path,
    *,
    clock: Clock,
    jobs: Iterable[str] | None = None,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """Everything `status` shows, as one JSON-ready dict with a `healthy` verdict; webhook
    URLs masked (`secrets`: known secrets to mask anywhere else in them). `jobs`: the
    configured ones. A job with runs on record but no longer configured (renamed, removed) is
    listed, `configured: false`, and its last failure no longer makes the verdict: retention
    keeps each job's latest run for ever, so it never would clear (found by probing)."""
    configured = None if jobs is None else set(jobs)
    secrets = list(secrets)
    from daemon.store import Store

    async with Store.open(database, clock=clock, read_only=True) as store:
        latest = {r.job: r for r in await store.last_runs()}
        finished = {r.job: r for r in await store.last_runs(finished_only=True)}
        events = await store.count_events_by_status()
        actions = await store.count_actions_by_status()
        subscriptions = await store.list_subscriptions()
    now = clock.now()
    problems: list[str] = []
    job_rows: list[dict[str, Any]] = []
    for name in sorted(set(latest) | (configured or set())):
        run = latest.get(name)
        done = finished.get(name)
        current = configured is None or name in configured
        if current and done is not None and done.status != "ok":
            problems.append(f"job {name}: last run {done.status}: {done.error or ''}".rstrip(": "))
        if run is None:
            job_rows.append(
                {"job": name, "status": "never", "last_finished_status": None, "configured": True}
            )
            continue
        job_rows.append(
            {
                "job": name,
                "configured": current,
                "run_id": run.id,
                "status": run.status,
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "duration_s": None if run.duration is None else round(run.duration, 3),
                "pages": run.pages,
                "fetched": run.fetched,
                "inserted": run.inserted,
                "updated": run.updated,
                "unchanged": run.unchanged,
                "deleted": run.deleted,
                "error": run.error,
                "last_finished_status": None if done is None else done.status,
            }
        )
    dead = {"events": events.get("dead", 0), "actions": actions.get("dead", 0)}
    if dead["events"] or dead["actions"]:
        problems.append(f"dead letters: {dead['events']} events, {dead['actions']} actions")
    subs = [
        {
            "id": s.id,
            "model": s.model,
            "status": s.status,
            "post_url": mask_webhook_url(s.post_url, secrets),
            "expires_at": _iso(s.expires_at),
            "expires_in_s": None
            if s.expires_at is None
            else int((s.expires_at - now).total_seconds()),
        }
        for s in subscriptions
    ]
    return {
        "database": str(database),
        "healthy": not problems,
        "problems": problems,
        "jobs": job_rows,
        "events": events,
        "actions": actions,
        "dead_letters": dead,
        "subscriptions": subs,
    }


def _short(when: str | None) -> str:
    return "-" if when is None else when[:19].replace("T", " ")


def _counts(by_status: dict[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in by_status.items())


def render_text(report: dict[str, Any]) -> str:
    lines = [f"database: {report['database']}", "", "sync jobs:"]
    if not report["jobs"]:
        lines.append("  (no runs yet)")
    for j in report["jobs"]:
        if j["status"] == "never":
            lines.append(f"  {j['job']:<24} never run")
            continue
        dur = "running" if j["duration_s"] is None else f"{j['duration_s']:.1f}s"
        lines.append(
            f"  {j['job']:<24} {j['status']:<9} started {_short(j['started_at'])} UTC  {dur}  "
            f"fetched {j['fetched']} ins {j['inserted']} upd {j['updated']} "
            f"same {j['unchanged']} del {j['deleted']}"
        )
        if j["error"]:
            lines.append(f"  {'':<24} error: {j['error']}")
        if not j["configured"]:
            lines.append(f"  {'':<24} (no longer configured: not counted)")
    lines += ["", f"inbox:   {_counts(report['events'])}", f"actions: {_counts(report['actions'])}"]
    dead = report["dead_letters"]
    lines.append(f"dead letters: {dead['events']} events, {dead['actions']} actions")
    lines += ["", "subscriptions:"]
    if not report["subscriptions"]:
        lines.append("  (none)")
    for s in report["subscriptions"]:
        lines.append(
            f"  {s['model']:<10} {s['id']:<24} {s['status']:<10} "
            f"expires {_short(s['expires_at'])} UTC"
        )
    lines += ["", "healthy" if report["healthy"] else "UNHEALTHY: " + "; ".join(report["problems"])]
    return safe_lines(lines)
