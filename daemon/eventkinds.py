"""The event vocabulary shared by the config (which validates rules against it at load) and the
webhook side (which produces events). A bottom-layer module with no imports of ours, so the
config can check `on` and `match` without loading the webhook code.
"""

from __future__ import annotations

import fnmatch

# Every kind `daemon.webhooks.events.parse_payload` produces; other NetSapiens models become
# `netsapiens.<model>`.
EVENT_KINDS: tuple[str, ...] = (
    "message.received",
    "message.sent",
    "call.missed",
    "call.completed",
    "call.ringing",
    "call.answered",
    "call.ended",
    "voicemail.received",
    "messagesession.updated",
)
OTHER_KIND_PREFIX = "netsapiens."

# The fields of the rules' `event` object that `match` may test (DESIGN §3).
EVENT_FIELDS: tuple[str, ...] = (
    "kind",
    "source",
    "from",
    "to",
    "body",
    "direction",
    "session_id",
    "domain",
    "user",
    "occurred_at",
    "duration",
)


def kind_matches(pattern: str, kind: str) -> bool:
    """`on` matching: an exact kind or a shell-style glob (`message.*`), case-sensitive."""
    return fnmatch.fnmatchcase(kind, pattern)


def pattern_is_known(pattern: str) -> bool:
    """Whether an `on` pattern can ever match: it names a known kind, globs over at least one,
    or names a `netsapiens.<model>` kind."""
    if pattern.startswith(OTHER_KIND_PREFIX) and len(pattern) > len(OTHER_KIND_PREFIX):
        return True
    return any(kind_matches(pattern, kind) for kind in EVENT_KINDS)
