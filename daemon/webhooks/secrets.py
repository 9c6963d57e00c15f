"""The webhook secret: the only thing that authenticates a NetSapiens delivery.

NetSapiens signs nothing (upstream-apis §5); the secret travels as the last segment of the
post url we gave it. So the comparison must not leak, through timing, how much of a guess was
right, or which of the accepted secrets it matched: every check compares the candidate with
the current secret *and* with the previous one (or a stand-in when there is none) using
`hmac.compare_digest`, and combines the results without short-circuiting.

Rotation: when the operator sets a new `secret` and moves the old one to `previous_secret`,
the old one stays valid until `previous_until` (the caller sets it to load time +
`rotation_grace`), long enough for the SubscriptionKeeper to replace every subscription
whose post url still carries it. After that the old secret gets the same 404 as any other.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

__all__ = ["SecretCheck", "WebhookSecrets"]


class SecretCheck(Protocol):
    """What the listener asks of its secrets; a reloadable holder may stand in for
    `WebhookSecrets`."""

    def matches(self, candidate: str, now: datetime) -> bool: ...


def _bytes(text: str) -> bytes:
    # A path segment may hold anything percent-decoding produced, lone surrogates included.
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class WebhookSecrets:
    """The current secret and, during a rotation, the previous one until `previous_until`."""

    current: str = field(repr=False)
    previous: str | None = field(default=None, repr=False)
    previous_until: datetime | None = None

    def __post_init__(self) -> None:
        if not self.current:
            raise ValueError("the webhook secret must not be empty")
        if self.previous is not None and self.previous_until is None:
            raise ValueError("a previous secret needs previous_until")

    @classmethod
    def rotating(
        cls, current: str, previous: str | None, *, loaded_at: datetime, grace: timedelta
    ) -> WebhookSecrets:
        """From `[webhooks.netsapiens]`: `previous` (if any) is accepted until
        `loaded_at + grace`. A reload that keeps the same pair should keep the first
        `previous_until`, not start the grace again."""
        if not previous or previous == current:
            return cls(current)
        return cls(current, previous, loaded_at + grace)

    def previous_active(self, now: datetime) -> bool:
        return (
            self.previous is not None
            and self.previous_until is not None
            and now < self.previous_until
        )

    def matches(self, candidate: str, now: datetime) -> bool:
        """Whether `candidate` is the current secret, or the previous one while its grace
        lasts. Always two constant-time comparisons, results combined without branching on
        the first."""
        given = _bytes(candidate)
        current = hmac.compare_digest(given, _bytes(self.current))
        other = _bytes(self.previous if self.previous is not None else self.current)
        previous = hmac.compare_digest(given, other)
        return current | (previous & self.previous_active(now))
