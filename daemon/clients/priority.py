"""Requests made on behalf of an action (an SMS reply, a ticket) rather than a sync.

The dispatcher wraps each action's upstream call in `action_requests()`; the HTTP core reads the
flag to (a) draw on the share of the upstream's rate budget that syncs may not use
(`action_reserve`), so a big sync cannot starve a reply, and (b) not retry: the dispatcher owns
an action's retries (backoff with jitter, `dead` after `max_attempts`), so an action never sits
in a retry loop for minutes holding up the sender's queue. A context variable, so the flag
follows the call through the client layers without every method growing a parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTION: ContextVar[bool] = ContextVar("integration_daemon_action_request", default=False)


@contextmanager
def action_requests() -> Iterator[None]:
    """Mark the requests made inside the block as an action's."""
    token = _ACTION.set(True)
    try:
        yield
    finally:
        _ACTION.reset(token)


def for_action() -> bool:
    """Whether the current request is made for an action."""
    return _ACTION.get()
