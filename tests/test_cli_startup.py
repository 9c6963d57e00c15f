"""`daemon` imports only the command it runs (issue 18: `daemon --help` in under 0.15 s).

The parser lists every command from `daemon.commands.COMMANDS` and imports one module; these
tests keep that table true to the modules, and check what a start-up imports in a fresh
interpreter (timing is the benchmark's job: `python -m bench`).
"""

from __future__ import annotations

import argparse
import json
import pkgutil
import subprocess
import sys
from typing import Any

import pytest

import daemon.commands
from daemon.cli import build_parser
from daemon.commands import API_COMMANDS, COMMANDS, chosen


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _helps(action: argparse._SubParsersAction[Any]) -> dict[str, str | None]:
    return {c.dest: c.help for c in action._choices_actions}


def test_every_module_is_listed_once() -> None:
    modules = {i.name for i in pkgutil.iter_modules(daemon.commands.__path__)}
    listed = [c.module for c in (*COMMANDS, *API_COMMANDS)]
    assert sorted(listed) == sorted(m for m in modules if m.startswith(("cmd_", "api_")))


def test_listed_help_is_the_modules_own() -> None:
    full = _subparsers(build_parser())
    own = _helps(full)
    assert own == {c.name: c.help for c in COMMANDS} | {"api": own["api"]}
    api = _subparsers(full.choices["api"])
    assert _helps(api) == {c.name: c.help for c in API_COMMANDS}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], (None, None)),
        (["run-once", "blesta-clients"], ("run-once", None)),
        (["--config", "x.toml", "status", "--json"], ("status", None)),
        (["--config=x.toml", "api", "halo", "tickets", "list"], ("api", "halo")),
        (["api", "--config", "run", "billomat"], ("api", "billomat")),
        (["--", "run"], ("run", None)),
    ],
)
def test_chosen(argv: list[str], expected: tuple[str | None, str | None]) -> None:
    assert chosen(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["run-once", "a", "b", "--json", "--parallel", "2"],
        ["--config", "c.toml", "check-config", "--json"],
        ["api", "blesta", "clients", "getList", "status=active"],
        ["api", "halo", "tickets", "list", "--all"],
        ["sandbox", "--demo-size", "10"],
    ],
)
def test_lazy_parser_reads_argv_as_the_full_one(argv: list[str]) -> None:
    lazy, full = vars(build_parser(argv).parse_args(argv)), vars(build_parser().parse_args(argv))
    assert lazy == full


def _imported(*argv: str) -> set[str]:
    code = (
        "import json, sys\n"
        "from daemon.cli import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stderr.strip().splitlines()[-1]))


def test_help_imports_no_command() -> None:
    loaded = _imported("--help")
    heavy = {"aiohttp", "pydantic", "structlog", "phonenumbers", "jinja2", "anyio", "asyncio"}
    assert not loaded & heavy
    assert not [m for m in loaded if m.startswith("daemon.commands.")]


def test_run_once_help_imports_only_its_module() -> None:
    loaded = _imported("run-once", "--help")
    # `common` is no command: the shared helpers (`bounded_int` builds the parser), and cheap.
    assert sorted(m for m in loaded if m.startswith("daemon.commands.")) == [
        "daemon.commands.cmd_run_once",
        "daemon.commands.common",
    ]
    assert not loaded & {"aiohttp", "pydantic", "daemon.config", "daemon.store"}


SYNC_ONLY = """
[daemon]
database = "{db}"

[upstreams.billomat]
billomat_id = "demo"
api_key = "key-0123456789"

[[sync]]
name = "billomat-clients"
upstream = "billomat"
resource = "clients"
every = "1h"
"""


def test_sync_only_config_loads_no_template_phone_or_cron_library(tmp_path: Any) -> None:
    """A config that only syncs on intervals never needs jinja2, phonenumbers or croniter:
    they are imported where a rule, a number or a cron schedule is validated."""
    config = tmp_path / "c.toml"
    config.write_text(SYNC_ONLY.format(db=tmp_path / "state.db"))
    config.chmod(0o600)
    loaded = _imported("--config", str(config), "check-config")
    assert "daemon.config" in loaded
    assert not loaded & {"jinja2", "phonenumbers", "croniter"}
    cron = SYNC_ONLY.replace('every = "1h"', 'cron = "*/5 * * * *"')
    config.write_text(cron.format(db=tmp_path / "state.db"))
    assert "croniter" in _imported("--config", str(config), "check-config")
