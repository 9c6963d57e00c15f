"""Keep a long-running part of the service alive: restart it with backoff when it fails.

A part that fails after it started (the keeper after an outage, the dispatcher after a bug) is
logged and restarted after a growing delay, without taking the others down. A part that fails
*before* it said it was ready fails the service's start — there is nothing to fall back to — and
a `Fatal` error (the store's writer died, the database is unusable) stops the whole service with
a non-zero exit, so systemd restarts the process instead of it limping on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.clock import Clock
from daemon.errors import DaemonError

log = structlog.get_logger(__name__)


class Fatal(DaemonError):
    """A fault the service cannot recover from in-process: exit non-zero, let systemd restart."""


class Part(Protocol):
    """A part's entry point: runs until cancelled and calls `task_status.started()` once ready."""

    def __call__(self, *, task_status: TaskStatus[Any]) -> Awaitable[None]: ...


class _Readiness:
    """Passes `started()` through once, and remembers whether it happened."""

    def __init__(self, inner: TaskStatus[Any]):
        self.inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started(value)


async def supervise(
    name: str,
    part: Callable[..., Awaitable[None]],
    *,
    clock: Clock,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run `part(task_status=...)` until cancelled, restarting it after failures."""
    readiness = _Readiness(task_status)
    failures = 0
    while True:
        try:
            await part(task_status=readiness)
        except anyio.get_cancelled_exc_class():
            raise
        except Fatal:
            raise
        except Exception as exc:
            if not readiness.done:
                raise  # it never started: the service's start fails with it
            failures += 1
            delay = min(max_delay, base_delay * 2 ** (failures - 1))
            log.error(
                "service.part_failed",
                part=name,
                error=f"{type(exc).__name__}: {exc}",
                failures=failures,
                restart_in_s=round(delay, 1),
                exc_info=True,
            )
            await clock.sleep(delay)
            log.info("service.part_restarted", part=name, failures=failures)
            continue
        # A part that returns has nothing more to do (e.g. no watchdog configured).
        readiness.started()
        return
