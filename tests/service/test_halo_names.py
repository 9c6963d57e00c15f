"""Ticket names a rule gives literally (`tickettype = "SMS"`) are checked against Halo when the
service starts and after a reload: an unknown one is an error in the log at once, naming the
rule, the field and the names Halo has — not a dead action at the first matching message. The
service object in process, against the simulators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.config import load_settings
from daemon.reload import reload
from daemon.sandbox.orchestra import Sandbox
from daemon.service import Service
from tests.service.sandboxes import service_sandbox

NAMED = """
[[rules]]
name = "{name}"
on = "message.received"
match = {{ body = "^never matches$" }}
action = "halo_ticket"
ticket.summary = "x"
ticket.tickettype = "{tickettype}"
ticket.team = "Team 1"
ticket.priority = "{{{{ event.body }}}}"
"""


def _with_a_typo(text: str) -> str:
    rule = NAMED.format(name="typo", tickettype="TicketTyp 1")
    return text.replace("[[rules]]", rule + "\n[[rules]]", 1)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with service_sandbox(tmp_path, _with_a_typo) as (sb, _):
        yield sb


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def _wait_for(logs: list[dict[str, Any]], name: str, count: int = 1) -> None:
    with anyio.fail_after(10):
        while len(_events(logs, name)) < count:
            await anyio.sleep(0.01)


async def test_unknown_ticket_names_are_logged_at_start_and_after_a_reload(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    service = Service(load_settings(sb.config_path), clock=FakeClock(datetime.now(UTC)),
                      config_path=sb.config_path, handle_signals=False)  # fmt: skip
    with capture_logs() as logs, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            await _wait_for(logs, "rules.halo_names_checked")
            (unknown,) = _events(logs, "rules.halo_name_unknown")
            assert unknown["rule"] == "typo" and "tickettype" in unknown["error"]
            assert "'TicketTyp 1'" in unknown["error"] and "tickettype 1" in unknown["error"]
            checked = _events(logs, "rules.halo_names_checked")[0]
            # team "Team 1" is known; the templated priority is left to the action
            assert (checked["names"], checked["unknown"]) == (2, 1)

            # Fixed by a reload: checked again, nothing unknown.
            sb.config_path.write_text(
                sb.config_path.read_text().replace('"TicketTyp 1"', '"TicketType 1"')
            )
            await reload(service)
            await _wait_for(logs, "rules.halo_names_checked", 2)
            assert _events(logs, "rules.halo_names_checked")[1]["unknown"] == 0
            assert len(_events(logs, "rules.halo_name_unknown")) == 1
            service.request_shutdown()


async def test_a_halo_that_cannot_be_read_at_start_does_not_hold_the_start_up(
    sandbox: Sandbox,
) -> None:
    """Halo refuses the name lists at start: the service starts all the same, the check says
    Halo is unavailable and tries again later, and once Halo answers the unknown name is
    reported."""
    sb = sandbox
    sb.halo.faults.update({"fail_next": 1, "fail_status": 400, "path_filter": "/api/TicketType"})
    clock = FakeClock(datetime.now(UTC))
    service = Service(load_settings(sb.config_path), clock=clock,
                      config_path=sb.config_path, handle_signals=False)  # fmt: skip
    with capture_logs() as logs, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)  # started: the check did not hold it up
            await _wait_for(logs, "rules.halo_names_unavailable")
            assert not _events(logs, "rules.halo_names_checked")
            assert not _events(logs, "service.part_failed")  # expected, not a failure
            clock.advance(60)  # past the retry delay; Halo answers now
            await _wait_for(logs, "rules.halo_names_checked")
            assert len(_events(logs, "rules.halo_name_unknown")) == 1
            service.request_shutdown()
