"""A scripted phone at the far end: an auto-responder that answers every SMS it is sent.

Two auto-responders facing each other text forever; the daemon's loop guard must stop that
(DESIGN §5). Attached to a `NetsapiensState`, this peer watches the messages the API sends and,
for each one addressed to its number, makes a reply arrive a moment later — stored and posted to
the `message` subscribers exactly like a real inbound SMS. It also serves `daemon sandbox`
users who want to see the guard at work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from daemon.sandbox.netsapiens_state import NetsapiensState

Record = dict[str, Any]


def _digits(number: str) -> str:
    return "".join(c for c in str(number) if c.isdigit())


@dataclass
class AutoResponder:
    """Answers every SMS sent to `number` with `reply`, up to `limit` times (a safety net for
    tests: without the loop guard, two responders would otherwise never stop)."""

    state: NetsapiensState
    number: str
    reply: str = "Thanks for your message! We will get back to you as soon as we can."
    limit: int = 50
    answered: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def attach(self) -> AutoResponder:
        self.state.on_sent.append(self._on_sent)
        return self

    def detach(self) -> None:
        if self._on_sent in self.state.on_sent:
            self.state.on_sent.remove(self._on_sent)

    def _on_sent(self, msg: Record) -> None:
        if _digits(msg.get("dialed", "")) != _digits(self.number) or self.answered >= self.limit:
            return
        self.answered += 1
        task = asyncio.get_running_loop().create_task(
            self.state.inbound_sms(self.number, str(msg.get("from-number", "")), self.reply)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settle(self) -> None:
        """Wait for the replies already scheduled to have been posted."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
