"""Ticket type, team, status and priority names, checked against Halo when the service starts
and after every reload.

A rule may name them (`tickettype = "SMS"`) instead of giving ids. A typo used to show only when
the first matching message made its ticket (the action then dead); here every literal name is
looked up as soon as Halo answers, and an unknown one is an error in the log at once
(`rules.halo_name_unknown`, naming the rule, the field and the names Halo has). A templated
value (`{{ ... }}`) is known only when rendered, so it is left to the action. The names are
loaded once per Halo upstream and kept by its executor, which the actions then use.

It runs as a service part that finishes once it has checked; while Halo cannot be read it says
so (`rules.halo_names_unavailable`) and tries again with backoff, never holding up the start.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from anyio.abc import TaskStatus

from daemon.clock import Clock
from daemon.config import Settings
from daemon.errors import UpstreamError
from daemon.rules.actions import NAMED_FIELDS
from daemon.rules.dispatcher import Executors

__all__ = ["NAMES_CHECK", "check_halo_names", "literal_names", "names_check"]

NAMES_CHECK = "halo-names"  # the part's name in the service
FIRST_RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0

log = structlog.get_logger(__name__)


def literal_names(settings: Settings) -> Iterator[tuple[str, str | None, str, str]]:
    """(rule, its Halo upstream or None for the default, field, name) of every enabled ticket
    rule that names a type, team, status or priority literally."""
    for rule in settings.rules:
        if not rule.enabled or rule.action != "halo_ticket" or not rule.ticket:
            continue
        for field in NAMED_FIELDS:
            value = rule.ticket.get(field)
            if isinstance(value, str) and "{{" not in value and "{%" not in value:
                yield rule.name, rule.halo_upstream, field, value


async def check_halo_names(
    settings: Settings, executors: Executors, clock: Clock, *, task_status: TaskStatus[Any]
) -> None:
    """Look every literal name up once; log each unknown one. While a Halo cannot be read, say
    so and try again after a growing delay (up to MAX_RETRY_DELAY)."""
    task_status.started()
    wanted = list(literal_names(settings))
    delay = FIRST_RETRY_DELAY
    while wanted:
        try:
            unknown = await _check(wanted, executors)
        except UpstreamError as exc:
            log.warning("rules.halo_names_unavailable", error=str(exc), retry_in_s=delay)
            await clock.sleep(delay)
            delay = min(MAX_RETRY_DELAY, delay * 2)
            continue
        log.info("rules.halo_names_checked", names=len(wanted), unknown=unknown)
        return


async def _check(wanted: list[tuple[str, str | None, str, str]], executors: Executors) -> int:
    unknown = 0
    for rule, upstream, field, value in wanted:
        actions = executors.halo.get(upstream or executors.default_halo or "")
        if actions is None:
            continue  # no such upstream: the config check names it
        await actions.names.load()  # once per upstream
        problem = actions.names.unknown(field, value)
        if problem is not None:
            unknown += 1
            log.error("rules.halo_name_unknown", rule=rule, field=field, error=problem)
    return unknown


def names_check(
    settings: Settings, executors: Executors, clock: Clock
) -> Callable[..., Awaitable[None]]:
    """The check as a service part (`supervise` calls it with `task_status`)."""
    return functools.partial(check_halo_names, settings, executors, clock)
