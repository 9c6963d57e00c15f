"""Reading `daemon.toml`: find it, resolve references, validate, cross-check.

Every problem is collected and raised together as one `ConfigError`, each naming its key path
(`sync[2].every`), because an operator fixing a file wants the whole list, not one error per
attempt. Sections are validated one by one for the same reason: an invalid `[http]` must not
hide a bad `[[rules]]` entry.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.config.checks import (
    Collector,
    check_rule_syntax,
    check_unique,
    check_upstream_refs,
)
from daemon.config.models import (
    DaemonSettings,
    HttpSettings,
    Rule,
    Settings,
    SyncJob,
    WebhooksSettings,
)
from daemon.config.secrets import Resolved, insecure_mode, join, resolve_references
from daemon.config.upstreams import UPSTREAM_KINDS, UpstreamSettings
from daemon.config.values import expand_user, format_duration
from daemon.errors import ConfigError, ConfigProblem
from daemon.logs import redact_text

SYSTEM_CONFIG = Path("/etc/integration-daemon/daemon.toml")
SECTIONS = ("daemon", "http", "upstreams", "webhooks", "sync", "rules")
MAX_CONFIG_BYTES = 1024 * 1024


def resolve_config_path(explicit: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """DESIGN §2's search order: `--config`, `$DAEMON_CONFIG`, `./daemon.toml`, `/etc/...`.

    `--config ""` is an error, not "not given": `daemon --config "$CFG"` with CFG unset must not
    fall through to ./daemon.toml or the system's config. (An empty $DAEMON_CONFIG is unset,
    as the shell's convention has it.)"""
    if explicit is not None:
        if not explicit.strip():
            raise ConfigError("--config is empty: name the configuration file")
        return _named_file(_expand(explicit, "--config"), "--config")
    from_env = env.get("DAEMON_CONFIG")
    if from_env:
        return _named_file(_expand(from_env, "$DAEMON_CONFIG"), "$DAEMON_CONFIG")
    for candidate in (Path("daemon.toml"), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no configuration file: pass --config, set $DAEMON_CONFIG, or create ./daemon.toml "
        f"or {SYSTEM_CONFIG}"
    )


def _named_file(path: Path, origin: str) -> Path:
    """`path` if it is a regular file (stat only: a FIFO is not opened, so it cannot block);
    otherwise the reason, as a `ConfigError`."""
    where = f"configuration file {str(path)!r} (from {origin})"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where} cannot be read: {getattr(exc, 'strerror', 0) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{where} is a directory, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where} is not a regular file (a FIFO, socket or device)")
    return path


def _expand(raw: str, origin: str) -> Path:
    try:
        return expand_user(raw)
    except ValueError as exc:
        raise ConfigError(f"configuration file (from {origin}): {exc}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of `path`; every way it can be unreadable is a `ConfigError`."""
    try:
        # Non-blocking, so a FIFO cannot hang the load; checked on the descriptor.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{str(path)!r} is not a regular file", source=str(path))
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [ConfigProblem("", f"cannot read {str(path)!r}: {getattr(exc, 'strerror', 0) or exc}")],
            source=str(path),
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB", source=str(path)
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
            source=str(path),
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = f"TOML syntax error: {exc}"
    except RecursionError:
        message = "TOML syntax error: values are nested too deeply"
    except ValueError as exc:  # e.g. an integer literal with thousands of digits
        message = f"TOML syntax error: {exc}"
    raise ConfigError([ConfigProblem("", message)], source=str(path))


def load_settings(
    path: Path,
    env: Mapping[str, str] | None = None,
    *,
    credentials_dir: str | None = None,
) -> Settings:
    """Read, resolve and validate one file; raises `ConfigError` listing every problem."""
    env = os.environ if env is None else env
    if credentials_dir is None:
        credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    path = Path(path)
    data = read_config_file(path)
    try:
        return _parse(
            data,
            env=env,
            credentials_dir=credentials_dir,
            base_dir=path.resolve().parent,
            file=path,
        )
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=str(path)) from None


def parse_settings(
    data: dict[str, Any],
    *,
    env: Mapping[str, str],
    credentials_dir: str | None,
    base_dir: Path,
) -> Settings:
    """Validate already-parsed TOML data (no file-permission check: there is no file)."""
    return _parse(data, env=env, credentials_dir=credentials_dir, base_dir=base_dir, file=None)


def _parse(
    data: dict[str, Any],
    *,
    env: Mapping[str, str],
    credentials_dir: str | None,
    base_dir: Path,
    file: Path | None,
) -> Settings:
    """Resolve, validate, cross-check; whatever the input, the outcome is Settings or a
    ConfigError (never a traceback: `check-config` is what an operator runs on a broken file),
    and no problem message carries a resolved secret."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table of sections, not {type(data).__name__}")
    secrets: list[str] = []
    try:
        resolved = resolve_references(
            data, env=env, credentials_dir=credentials_dir, base_dir=base_dir
        )
        secrets = resolved.secrets
        return _validate(resolved, env=env, base_dir=base_dir, file=file)
    except ConfigError as exc:
        problems = [ConfigProblem(p.path, redact_text(p.message, secrets)) for p in exc.problems]
        raise ConfigError(problems) from None
    except RecursionError:
        raise ConfigError("values are nested too deeply") from None
    except Exception as exc:  # the boundary between untrusted input and exit 2
        detail = redact_text(f"{type(exc).__name__}: {exc}", secrets)
        raise ConfigError(
            f"could not validate the configuration ({detail}); this is a bug in the daemon, "
            "please report it with the offending key"
        ) from None


def _validate(
    resolved: Resolved,
    *,
    env: Mapping[str, str],
    base_dir: Path,
    file: Path | None,
) -> Settings:
    c = Collector(resolved.failed)
    c.problems.extend(resolved.problems)
    raw = resolved.data
    for key in raw:
        if key not in SECTIONS:
            c.add(key, f"unknown section (expected one of: {', '.join(SECTIONS)})")

    daemon_raw = dict(_table(c, raw, "daemon"))
    if "database" not in daemon_raw:
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        daemon_raw["database"] = str(Path(state_dir) / "state.db") if state_dir else "state.db"
    ctx: dict[str, Any] = {"base_dir": base_dir}
    daemon = c.validate(DaemonSettings, daemon_raw, "daemon", ctx) or DaemonSettings()
    ctx["default_region"] = daemon.default_region
    http = c.validate(HttpSettings, _table(c, raw, "http"), "http", ctx)

    upstreams: dict[str, UpstreamSettings] = {}
    for name, table in _table(c, raw, "upstreams").items():
        up = _upstream(c, name, table, ctx)
        if up is not None:
            upstreams[name] = up
    known_upstreams = set(_table(c, raw, "upstreams"))

    webhooks = c.validate(WebhooksSettings, _table(c, raw, "webhooks"), "webhooks", ctx)
    jobs = [c.validate(SyncJob, t, p, ctx) for p, t in _array(c, raw, "sync")]
    rules = [c.validate(Rule, t, p, ctx) for p, t in _array(c, raw, "rules")]

    check_upstream_refs(c, upstreams, known_upstreams, webhooks, jobs, rules)
    check_unique(c, jobs, rules)
    for i, rule in enumerate(rules):
        if rule is not None:
            check_rule_syntax(c, f"rules[{i}]", rule)
    if file is not None and resolved.literal_secrets:
        allowed = daemon_raw.get("allow_insecure_config") is True
        why = None if allowed else insecure_mode(file)
        for p in resolved.literal_secrets if why else ():
            c.add(
                p,
                f"literal secret in a file readable by group or others ({why}): chmod 600 "
                "the file, or use a ${ENV}, {file=...} or {credential=...} reference, or set "
                "daemon.allow_insecure_config = true",
            )
    if c.problems or http is None or webhooks is None:
        raise ConfigError(c.problems)
    settings = Settings(
        daemon=daemon,
        http=http,
        upstreams=upstreams,
        webhooks=webhooks,
        sync=[j for j in jobs if j is not None],
        rules=[r for r in rules if r is not None],
    )
    settings._extra_secrets = tuple(resolved.secrets)
    return settings


def _table(c: Collector, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        c.add(key, f"must be a table ([{key}]), not {type(value).__name__}")
        return {}
    return value


def _array(c: Collector, raw: Mapping[str, Any], key: str) -> list[tuple[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        c.add(key, f"must be an array of tables ([[{key}]])")
        return []
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _upstream(c: Collector, name: str, table: Any, ctx: dict[str, Any]) -> UpstreamSettings | None:
    path = join("upstreams", name)
    if not isinstance(table, dict):
        c.add(path, "must be a table ([upstreams.<name>])")
        return None
    if "name" in table:
        c.add(join(path, "name"), "unknown key (the name is the table's key)")
        return None
    kind = table.get("kind", name)
    model = UPSTREAM_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        where = join(path, "kind") if "kind" in table else path
        hint = "" if "kind" in table else " (set `kind`: the table name is not a known kind)"
        c.add(
            where,
            f"unknown upstream kind {kind!r}{hint}; expected one of: {', '.join(UPSTREAM_KINDS)}",
        )
        return None
    validated = c.validate(model, {**table, "name": name, "kind": kind}, path, ctx)
    return validated  # type: ignore[return-value]


def schedule_description(job: SyncJob) -> str:
    """`every 15m, jitter 30s` / `cron */15 * * * * (UTC), jitter 30s`, for summaries."""
    when = (
        f"every {format_duration(job.every)}" if job.every is not None else f"cron {job.cron} (UTC)"
    )
    return f"{when}, jitter {format_duration(job.jitter)}" if job.jitter else when
