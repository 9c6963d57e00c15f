"""What every subcommand does the same way: load the config, route logs, print JSON.

Stdout belongs to the command's answer (JSON for `daemon api`, a summary for `run-once`), so
log lines always go to stderr; and every secret the config resolved is handed to the log
redactor the moment the config is loaded, before anything can log or print.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from daemon.config import Settings, load_settings, resolve_config_path
from daemon.logs import (
    add_basic_pair,
    add_secrets,
    configure_logging,
    redact_strings,
    redact_text,
)


def load_cli_settings(explicit: str | None, *, log_level: str | None = None) -> Settings:
    """The config named by `--config` (or the default search), with logging set up for a CLI:
    stderr, the config's level unless `log_level` overrides it, secrets registered."""
    settings = load_settings(resolve_config_path(explicit))
    configure_logging(
        log_level or settings.daemon.log_level,
        settings.daemon.log_format,
        secrets=settings.secret_values(),
        basic_pairs=settings.secret_pairs(),
        stream=sys.stderr,
    )
    return settings


def register_secrets(settings: Settings) -> None:
    """Hand every secret the config resolved (and each Basic pair) to the one redactor that
    logs and every CLI output pass through."""
    add_secrets(settings.secret_values())
    for user, secret in settings.secret_pairs():
        add_basic_pair(user, secret)


def load_upstream(explicit_config: str | None, kind: str, name: str | None) -> Any:
    """The `[upstreams.<name>]` table a `daemon api <kind>` call talks to: `--upstream NAME`,
    else the first of that kind. Raw API calls log warnings and worse only."""
    from daemon.clients.factory import first_of_kind

    settings = load_cli_settings(explicit_config, log_level="warning")
    return settings.upstreams[first_of_kind(settings, kind, name)]


def emit_json(value: Any) -> None:
    """The command's answer on stdout, every registered secret masked (an upstream that echoes
    a request can put credentials in its answer)."""
    text = json.dumps(redact_strings(value), indent=2, default=str, ensure_ascii=False)
    print(redact_text(text))
