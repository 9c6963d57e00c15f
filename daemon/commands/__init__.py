"""Subcommands of `daemon`, each in its own module, imported only when it is the one run.

- `cmd_<name>.py` registers a top-level command (`daemon <name> ...`);
- `api_<upstream>.py` registers `daemon api <upstream> ...`.

Each module defines `register(sub, common)` where `sub` is the subparsers action to add to and
`common` is the parent parser carrying `--config` (pass it as `parents=[common]`). A handler is
attached with `parser.set_defaults(handler=fn)`; `fn(args) -> int` returns the exit code, raises
`ConfigError` for exit 2 and other `DaemonError`s for exit 1 (cli.py maps them).

Start-up: a command module imports what its command needs (aiohttp, the config models, the
rules engine...), so importing every module would make each command, `daemon --help` included,
pay for all of them. The tables below name each command, its module and its one-line help, in
`--help` order, so the parser can list every command while importing only the one on the
command line (`tests/test_cli_startup.py` checks the tables against the modules). A new command
is a module plus a line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Command:
    name: str  # as typed: `daemon <name>` (or `daemon api <name>`)
    module: str  # under daemon.commands
    help: str  # the line `--help` lists; the module's own add_parser(help=...) must match

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")


COMMANDS: tuple[Command, ...] = (
    Command("run", "cmd_run", "run the service until SIGTERM/SIGINT (SIGHUP reloads the config)"),
    Command("run-once", "cmd_run_once", "run sync jobs once, now, then exit"),
    Command(
        "check-config",
        "cmd_check_config",
        "validate the configuration and print a summary (secrets redacted)",
    ),
    Command(
        "status",
        "cmd_status",
        "last sync runs, inbox and action counts, dead letters, subscriptions",
    ),
    Command("events", "cmd_events", "inspect the webhook inbox; replay failed or dead events"),
    Command("rules", "cmd_rules", "try the [[rules]] on a webhook payload, sending nothing"),
    Command(
        "subscriptions",
        "cmd_subscriptions",
        "NetSapiens event subscriptions: list | sync | delete ID",
    ),
    Command(
        "sandbox",
        "cmd_sandbox",
        "simulated upstreams on loopback plus a config that points at them",
    ),
)

API_COMMANDS: tuple[Command, ...] = (
    Command("blesta", "api_blesta", "raw Blesta API call"),
    Command("reseller", "api_reseller", "Blesta Reseller API call"),
    Command(
        "halo",
        "api_halo",
        "HaloPSA: RESOURCE list|get|create|update|delete, or request METHOD PATH",
    ),
    Command(
        "billomat",
        "api_billomat",
        "Billomat: RESOURCE list|get|create|update|delete (invoices: complete, ...)",
    ),
    Command(
        "netsapiens", "api_netsapiens", "NetSapiens: token | send-sms | messages | subscriptions"
    ),
)

# Options of `daemon` (and of every command) that take a value: the word after them is not a
# command name.
_VALUE_OPTIONS = frozenset({"--config"})


def chosen(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """The command and (for `api`) the upstream named on the command line, as argparse will
    read them: the first two positional words, skipping options and option values."""
    words: list[str] = []
    skip, options = False, True
    for arg in argv:
        if skip:
            skip = False
        elif options and arg == "--":
            options = False
        elif options and arg.startswith("-") and arg != "-":
            skip = arg in _VALUE_OPTIONS
        else:
            words.append(arg)
            if len(words) == 2:
                break
    command = words[0] if words else None
    upstream = words[1] if command == "api" and len(words) > 1 else None
    return command, upstream
