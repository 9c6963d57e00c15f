"""Requests made on behalf of an action (an SMS reply, a ticket) rather than a sync.

The dispatcher wraps each action's upstream calls in `action_requests()`; the HTTP core reads
the scope to (a) draw on the share of the upstream's rate budget that syncs may not use
(`action_reserve`), so a big sync cannot starve a reply, but wait for it at most
`ACTION_BUDGET_WAIT` (past that it raises `BudgetExhausted` and the dispatcher defers the
action, freeing its slot for other senders' replies); (b) not retry: the dispatcher owns an
action's retries (backoff with jitter, `dead` after `max_attempts`), so an action never sits in
a retry loop for minutes holding up the sender's queue; and (c) count the requests that left,
so the dispatcher knows whether a refused attempt sent nothing at all. A context variable, so
the scope follows the call through the client layers without every method growing a parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ACTION_BUDGET_WAIT", "ActionScope", "action_requests", "current_action"]

# The longest an action's request waits for its upstream's rate budget. A Halo budget of
# 300 per 5 minutes spent by a burst of tickets would otherwise hold every dispatcher slot for
# up to 5 minutes, and SMS replies to other senders with them.
ACTION_BUDGET_WAIT = 5.0


@dataclass
class ActionScope:
    """One block of an action's requests. `sent` counts those that left (or may have: counted
    just before the send), token requests included."""

    sent: int = 0


_ACTION: ContextVar[ActionScope | None] = ContextVar(
    "integration_daemon_action_request", default=None
)


@contextmanager
def action_requests() -> Iterator[ActionScope]:
    """Mark the requests made inside the block as an action's; the scope counts them."""
    scope = ActionScope()
    token = _ACTION.set(scope)
    try:
        yield scope
    finally:
        _ACTION.reset(token)


def current_action() -> ActionScope | None:
    """The action scope the current request is made in, if any."""
    return _ACTION.get()
