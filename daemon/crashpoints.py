"""Named crash points on the event path, for the crash tests only (issue 18).

`crashpoint("name")` is called at each step where a crash would leave a different state behind
(see `POINTS`). It does nothing — one comparison — unless the process was started with the
environment variable `INTEGRATION_DAEMON_CRASH_AT`, which is **for tests only** and must never
be set on a real service: when it names this point, the process sends itself SIGKILL there, as
an OOM kill or a power cut would end it (no `finally`, no shutdown, no flush).

    INTEGRATION_DAEMON_CRASH_AT=before_call      # the first time `before_call` is reached
    INTEGRATION_DAEMON_CRASH_AT=before_call@3    # the third time

The variable is read once, when this module is first imported, so the process's behaviour is
fixed at start (tests set it on the subprocess they start; a restart without it is inert). An
unknown point name or a bad count is refused at import with `ValueError`: a typo must not make
a crash test pass by never crashing.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "POINTS", "crashpoint", "parse"]

ENV = "INTEGRATION_DAEMON_CRASH_AT"

# In the order an event meets them.
POINTS = (
    "after_parse",  # listener: the body parsed into events, nothing written yet
    "before_commit",  # inbox: the INSERT ran inside the group's transaction, not committed
    "after_commit_before_2xx",  # listener: the events are committed, the 2xx not yet sent
    "after_plan",  # dispatcher: the plan and its action rows are committed
    "before_call",  # dispatcher: `attempt_started_at` committed, the upstream not yet called
    "after_call",  # dispatcher: the upstream answered, nothing of it recorded yet
    "before_outcome",  # store: an action's outcome (sent, failed, dead) about to be written
)


def parse(spec: str | None) -> tuple[str, int] | None:
    """`"name"` or `"name@N"` → (name, N); None or empty → None (inert)."""
    if not spec:
        return None
    name, _, count = spec.strip().partition("@")
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {name!r} (known: {', '.join(POINTS)})")
    try:
        hits = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}: {spec!r}: the count after @ must be a whole number") from None
    if hits < 1:
        raise ValueError(f"{ENV}: {spec!r}: the count after @ must be at least 1")
    return name, hits


# Process-wide by nature (a SIGKILL ends the whole process), so module state, read once.
_TARGET = parse(os.environ.get(ENV))
_hits = 0


def crashpoint(name: str) -> None:
    """SIGKILL this process here if `INTEGRATION_DAEMON_CRASH_AT` names this point (and this is
    its N-th hit); otherwise nothing."""
    if _TARGET is None:
        return
    global _hits
    target, count = _TARGET
    if name != target:
        return
    _hits += 1
    if _hits >= count:
        os.kill(os.getpid(), signal.SIGKILL)
