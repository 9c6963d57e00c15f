"""The event path in process on the injected clock, against the sandbox's simulators: the real
listener, store, keeper and dispatcher built from the sandbox's config by the service's own
wiring, with the simulators' clocks tied to the test's `FakeClock` (a reply's timestamp at the
PBX and the dispatcher's `attempt_started_at` must be on one clock for a look-up to work).

`FakeClock(autojump=True)` lets the HTTP core's retry backoff pass at once; the dispatcher is
driven with `run_until_idle()` and the clock moved past its retry backoff between passes.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from daemon.clock import FakeClock
from daemon.config import Settings, load_settings
from daemon.rules.dispatcher import Dispatcher
from daemon.sandbox.halo_sim import HaloState
from daemon.sandbox.netsapiens_state import NetsapiensState
from daemon.sandbox.orchestra import Sandbox, run_sandbox
from daemon.store import Store
from daemon.sync.batch import burst
from tests.eventwiring import wire_event_path
from tests.localnet import free_port
from tests.reliability.harness import refs, strip_syncs


def tune_upstreams(text: str, **values: str | int) -> str:
    """Add `key = value` lines to every `[upstreams.*]` table of a sandbox config."""
    lines = "".join(
        f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n"
        for k, v in values.items()
    )
    for name in ("blesta", "reseller", "billomat", "halo", "netsapiens"):
        text = text.replace(f"\n[upstreams.{name}]\n", f"\n[upstreams.{name}]\n{lines}", 1)
    return text


@dataclass
class Path_:
    sb: Sandbox
    settings: Settings
    clock: FakeClock
    store: Store
    dispatcher: Dispatcher

    @property
    def ns(self) -> NetsapiensState:
        return self.sb.netsapiens

    @property
    def halo(self) -> HaloState:
        return self.sb.halo

    def client_phones(self) -> list[str]:
        conn = sqlite3.connect(self.sb.directory / "state.db")
        try:
            rows = conn.execute("SELECT DISTINCT phone FROM contacts ORDER BY phone").fetchall()
        finally:
            conn.close()
        return [str(p).lstrip("+") for (p,) in rows]

    async def settle(self, *, passes: int = 30, step: float = 3600.0) -> int:
        """Work the inbox until nothing is open, moving the clock past every retry backoff;
        returns the passes it took."""
        for n in range(1, passes + 1):
            await self.dispatcher.run_until_idle()
            if not await self.store.list_events("pending", 1) and not await self.store.list_events(
                "failed", 1
            ):
                return n
            self.clock.advance(step)
        raise AssertionError(f"the inbox did not settle in {passes} passes")

    def refs(self) -> Counter[str]:
        return refs(self.halo)


@asynccontextmanager
async def event_path(
    tmp: Path, *, concurrency: int = 8, upstreams: dict[str, str | int] | None = None
) -> AsyncIterator[Path_]:
    clock = FakeClock(autojump=True)
    port = free_port()
    async with (
        run_sandbox(tmp, now=clock.now(), listen=f"127.0.0.1:{port}") as sb,
        AsyncExitStack() as stack,
    ):
        ns, halo = sb.netsapiens, sb.halo
        ns.wall, ns.now, halo.now = clock.now, clock.monotonic, clock.monotonic
        text = sb.config_path.read_text()
        text = text.replace('\nrate_limit = "300/5m"\n', "\n", 1)  # hundreds of tickets at once
        text = text.replace(
            "[daemon]\n",
            f"[daemon]\ndispatch.concurrency = {concurrency}\ndispatch.max_attempts = 4\n",
            1,
        )
        text = tune_upstreams(text, **(upstreams or {}))
        sb.config_path.write_text(text)
        settings = load_settings(sb.config_path)
        assert [r.status for r in await burst(settings, ["blesta-clients"], clock=clock)] == ["ok"]
        sb.config_path.write_text(strip_syncs(text))
        settings = load_settings(sb.config_path)
        wired = await wire_event_path(settings, stack, clock=clock, port=port)
        assert ns.live_subscriptions("message")
        yield Path_(sb, settings, clock, wired.store, wired.dispatcher)
