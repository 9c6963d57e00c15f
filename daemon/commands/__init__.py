"""Subcommands of `daemon`, discovered by module name so each lives in its own file.

- `cmd_<name>.py` registers a top-level command (`daemon <name> ...`);
- `api_<upstream>.py` registers `daemon api <upstream> ...`.

Each module defines `register(sub, common)` where `sub` is the subparsers action to add to and
`common` is the parent parser carrying `--config` (pass it as `parents=[common]`), and an
optional integer `ORDER` for `--help` listing order. A handler is attached with
`parser.set_defaults(handler=fn)`; `fn(args) -> int` returns the exit code, raises `ConfigError`
for exit 2 and other `DaemonError`s for exit 1 (cli.py maps them).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _discover(prefix: str) -> list[ModuleType]:
    mods = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if info.name.startswith(prefix)
    ]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


COMMAND_MODULES: list[ModuleType] = _discover("cmd_")
API_MODULES: list[ModuleType] = _discover("api_")
