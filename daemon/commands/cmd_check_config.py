"""`daemon check-config [--json]`: validate the file and show what the daemon would do with it.

The summary is what an operator checks after an edit — which database, which listener, which
upstreams with which credentials present, when each job will next run, the rule order — and it
is safe to paste into a ticket: credentials show as `[set]`, and the whole output goes through
the redactor with every resolved secret (in every spelling) as a last guard. Invalid
configuration raises `ConfigError`, which `cli.py` prints (every problem, with its key path) and
turns into exit 2; so does a `daemon.database` that is a directory, a device or not SQLite.
Secrets too short to be masked reliably are warned about on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from daemon.clock import SystemClock
from daemon.commands.common import check_database, register_secrets
from daemon.config import (
    Settings,
    SyncJob,
    UpstreamSettings,
    format_byte_size,
    format_duration,
    load_settings,
    resolve_config_path,
    schedule_description,
)
from daemon.config.values import mask_userinfo
from daemon.errors import StoreError
from daemon.logs import MIN_SECRET_LENGTH, RECOMMENDED_SECRET_LENGTH, redact_text
from daemon.sync.schedule import Schedule, upcoming

ORDER = 20
NEXT_RUNS = 3
URL_FIELDS = ("url", "tenant_url", "api_url")
AUTH_FIELDS = (
    "user",
    "key",
    "password",
    "api_key",
    "app_id",
    "app_secret",
    "client_id",
    "client_secret",
    "username",
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print a summary (secrets redacted)",
        description="Validate the configuration file and print a summary with secrets "
        "redacted. Exit 0 when valid; 2 with every problem and its key path otherwise.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    settings = load_settings(path)
    register_secrets(settings)
    try:
        # What `run` would meet there: a path that cannot be the daemon's SQLite file is
        # invalid configuration (exit 2, as for every command); one this daemon cannot use as
        # it stands (written by a newer version, unreadable) is not a config error, but the
        # operator should know.
        check_database(Path(settings.daemon.database), must_exist=False, source=str(path))
    except StoreError as exc:
        print(f"warning: daemon.database: {exc}", file=sys.stderr)
    for warning in short_secret_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    summary = summarize(settings, path, now=SystemClock().now())
    text = json.dumps(summary, indent=2) if args.json else render_text(summary)
    print(redact_text(text, settings.secret_values()))
    return 0


def short_secret_warnings(settings: Settings) -> list[str]:
    """One line per configured secret too short to be masked reliably in output."""
    sections: list[tuple[str, Any]] = [(f"upstreams.{n}", u) for n, u in settings.upstreams.items()]
    if settings.webhooks.netsapiens is not None:
        sections.append(("webhooks.netsapiens", settings.webhooks.netsapiens))
    out: list[str] = []
    for where, section in sections:
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if not isinstance(value, SecretStr):
                continue
            length = len(value.get_secret_value())
            if length < MIN_SECRET_LENGTH:
                out.append(
                    f"{where}.{field_name} is shorter than {MIN_SECRET_LENGTH} characters: it "
                    "cannot be masked in logs and output at all"
                )
            elif length < RECOMMENDED_SECRET_LENGTH:
                out.append(
                    f"{where}.{field_name} is shorter than {RECOMMENDED_SECRET_LENGTH} "
                    "characters: masking it also masks ordinary text that happens to match"
                )
    return out


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def next_runs(job: SyncJob, now: datetime, count: int = NEXT_RUNS) -> list[datetime]:
    """Nominal ticks after `now` (before jitter), by the scheduler's own rule."""
    return upcoming(Schedule(every=job.every, cron=job.cron), now, count)


def _upstream(up: UpstreamSettings) -> dict[str, Any]:
    url = (
        up.base_url
        if up.kind == "billomat"
        else next((getattr(up, f) for f in URL_FIELDS if getattr(up, f, None)), None)
    )
    url = None if url is None else mask_userinfo(url)
    fields = [f for f in type(up).model_fields if f in AUTH_FIELDS]
    auth = {f: "[set]" if getattr(up, f) else "[unset]" for f in fields}
    return {
        "name": up.name,
        "kind": up.kind,
        "url": url,
        "auth": auth,
        "timeout": format_duration(up.timeout),
        "max_retries": up.max_retries,
        "max_concurrency": up.max_concurrency,
        "rate_limit": str(up.rate_limit) if up.rate_limit else None,
        "max_response_bytes": format_byte_size(up.max_response_bytes),
        "max_retry_wait": format_duration(up.max_retry_wait),
    }


def _job(job: SyncJob, now: datetime) -> dict[str, Any]:
    return {
        "name": job.name,
        "upstream": job.upstream,
        "what": f"report {job.report}" if job.report else f"{job.resource}",
        "months": job.months,
        "table": job.table,
        "mode": job.mode,
        "schedule": schedule_description(job),
        "next_runs": [_iso(t) for t in next_runs(job, now)],
        "max_pages": job.max_pages,
        "max_duration": format_duration(job.max_duration),
        "max_tombstone_fraction": job.max_tombstone_fraction,
    }


def summarize(settings: Settings, path: Path, *, now: datetime) -> dict[str, Any]:
    """The summary as data; `--json` prints it as is, the text form is rendered from it."""
    d = settings.daemon
    ns = settings.webhooks.netsapiens
    webhooks: dict[str, Any] = {}
    if ns is not None:
        webhooks["netsapiens"] = {
            "secret": "[set]",
            "public_url": mask_userinfo(ns.public_url),
            "listener": f"/webhooks/netsapiens/<model>/{'[secret]'}",
            "subscribe": list(ns.subscribe),
            "domain": ns.domain,
            "renew_before": format_duration(ns.renew_before),
            "backfill": ns.backfill,
            "allow_from": list(ns.allow_from),
            "own_numbers": list(ns.own_numbers),
            "upstream": ns.upstream,
        }
    return {
        "config": str(path.resolve()),
        "valid": True,
        "database": str(d.database),
        "listen": settings.http.listen,
        "log": {"level": d.log_level, "format": d.log_format},
        "timezone": d.timezone,
        "default_region": d.default_region,
        "shutdown_timeout": format_duration(d.shutdown_timeout),
        "retention": format_duration(d.retention),
        "upstreams": [_upstream(u) for u in settings.upstreams.values()],
        "sync": [_job(j, now) for j in settings.sync],
        "rules": [
            {
                "name": r.name,
                "on": r.on,
                "action": r.action,
                "continue": r.continue_,
                "enabled": r.enabled,
            }
            for r in settings.rules
        ],
        "webhooks": webhooks,
    }


def render_text(s: dict[str, Any]) -> str:
    lines = [
        f"config:    {s['config']} (valid)",
        f"database:  {s['database']}",
        f"listen:    {s['listen']}",
        f"log:       {s['log']['level']} ({s['log']['format']})",
        f"timezone:  {s['timezone']}  default region: {s['default_region']}",
        f"shutdown:  {s['shutdown_timeout']}  retention: {s['retention']}",
        "",
        f"upstreams ({len(s['upstreams'])}):",
    ]
    for u in s["upstreams"]:
        auth = " ".join(f"{k}={v}" for k, v in u["auth"].items())
        limits = f"timeout {u['timeout']}, retries {u['max_retries']}, "
        limits += f"concurrency {u['max_concurrency']}"
        if u["rate_limit"]:
            limits += f", rate limit {u['rate_limit']}"
        limits += f", responses ≤ {u['max_response_bytes']}, retry waits ≤ {u['max_retry_wait']}"
        lines += [f"  {u['name']} [{u['kind']}] {u['url']}", f"    {auth}", f"    {limits}"]
    lines += ["", f"sync jobs ({len(s['sync'])}):"]
    for j in s["sync"]:
        months = f" months {j['months']}" if j["months"] else ""
        lines += [
            f"  {j['name']}: {j['upstream']} {j['what']}{months} → {j['table']} ({j['mode']})",
            f"    {j['schedule']}; next: {', '.join(j['next_runs'])}",
            f"    ends after {j['max_pages']} pages or {j['max_duration']}; tombstones at most "
            f"{j['max_tombstone_fraction']:.0%} of the table",
        ]
    lines += ["", f"rules ({len(s['rules'])}, tried in order):"]
    for i, r in enumerate(s["rules"], 1):
        flags = (" continue" if r["continue"] else "") + ("" if r["enabled"] else " (disabled)")
        lines.append(f"  {i}. {r['name']}: on {r['on']} → {r['action']}{flags}")
    lines += ["", "webhooks:"]
    ns = s["webhooks"].get("netsapiens")
    if ns is None:
        lines.append("  netsapiens: not configured")
    else:
        lines += [
            f"  netsapiens: {ns['public_url']}/<model>/[secret] via upstream {ns['upstream']}",
            f"    subscribe {', '.join(ns['subscribe'])} (domain {ns['domain']}), renew "
            f"{ns['renew_before']} before expiry, backfill {'on' if ns['backfill'] else 'off'}",
            f"    allow_from {', '.join(ns['allow_from']) or 'any'}; own numbers "
            f"{', '.join(ns['own_numbers']) or 'none'}",
        ]
    return "\n".join(lines)
