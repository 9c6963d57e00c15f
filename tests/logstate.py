"""Putting the process's logging back as a test found it.

`configure_logging` replaces the root handlers, sets levels on the aiohttp and aiosqlite
loggers, configures structlog and registers secrets with the redactor: all process-wide, so a
test that calls it must undo every part, or the next test logs into a closed stream or redacts
the wrong secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from daemon.logs import clear_secrets


@contextmanager
def logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        clear_secrets()
