"""Upkeep: keep the database file bounded and the service's gauges current (DESIGN §5).

One task, on the injected clock, with four steps on their own periods:

* `refresh` (every `refresh_every`, default 1 min, and at start): events and actions by status
  into `CountsCache` (which `/healthz` reads for dead letters) and the `/metrics` gauges; the
  database and WAL file sizes; each job's last success and staleness; the breaker. Scrapes and
  health checks therefore never count rows themselves.
* `checkpoint` (every `checkpoint_every`, default 5 min, and after a prune that deleted rows):
  `wal_checkpoint(PASSIVE)`, which copies what it can without waiting for anyone; and when the
  `-wal` file has grown past `wal_truncate_bytes` (default 64 MB: a long reader kept it from
  being reused, or one huge transaction) and PASSIVE got every frame back, `TRUNCATE`, which
  shrinks the file to zero. TRUNCATE waits for readers (up to busy_timeout), so it is tried
  only when PASSIVE says no reader still needs old frames; otherwise `store.checkpoint_blocked`.
* `prune` (every `prune_every`, default 1 h, first a minute after start): retention — events,
  actions and sync runs older than `[daemon] retention`, in short transactions
  (`Store.prune`). The horizon is never shorter than `min_retention` (default 8 days): the gap
  filler looks back up to 7 days for messages the webhooks missed, and an event pruned inside
  that window would lose its dedupe key and come back as new. A shorter configured retention
  is raised to it, with one `upkeep.retention_clamped` line.
* `optimize` (every `optimize_every`, default 1 day): `PRAGMA optimize`.

A step that fails is logged (`upkeep.failed` once, `upkeep.recovered` when it works again) and
counted in `integration_daemon_upkeep_failures_total`; the loop goes on. A `StoreError` while
the store is no longer healthy (its writer died, or it is closing) is not a step's failure:
it propagates, and the service treats a dead writer as fatal.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import aiosqlite
import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.clock import Clock
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.health import CountsCache, Health
from daemon.metrics import Metrics

log = structlog.get_logger(__name__)

__all__ = ["MIN_RETENTION", "CheckpointResult", "Upkeep"]

T = TypeVar("T")
MiB = 1024 * 1024
WAL_TRUNCATE_BYTES = 64 * MiB
DAY = 86400.0
GAP_LOOKBACK = 7 * DAY  # the gap filler's default `max_lookback` (daemon.webhooks.gapfill)
MIN_RETENTION = GAP_LOOKBACK + DAY
STEPS = ("refresh", "prune", "optimize", "checkpoint")  # the order within one turn


class UpkeepStore(Protocol):
    """What upkeep needs of `daemon.store.Store`."""

    path: Path

    @property
    def healthy(self) -> bool: ...

    async def count_events_by_status(self) -> dict[str, int]: ...

    async def count_actions_by_status(self) -> dict[str, int]: ...

    async def prune(self, older_than: datetime) -> dict[str, int]: ...

    async def optimize(self) -> None: ...

    async def checkpoint(self) -> tuple[int, int, int]: ...

    async def write(
        self,
        fn: Callable[[aiosqlite.Connection], Awaitable[T]],
        *,
        groupable: bool = False,
        transactional: bool = True,
    ) -> T: ...


@dataclass(frozen=True)
class CheckpointResult:
    mode: str  # PASSIVE, or TRUNCATE when the WAL had grown past the threshold
    busy: int  # 1: a reader or writer kept the checkpoint from finishing
    frames: int  # frames in the WAL
    checkpointed: int  # frames copied into the database
    wal_before: int  # -wal file size in bytes
    wal_after: int


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


async def _passive(conn: aiosqlite.Connection) -> tuple[int, int, int]:
    # TODO(store): belongs in `Database.checkpoint(mode)` with the rest of the SQL.
    async with conn.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


class Upkeep:
    """Built by the service after the store is open; `run` goes in its task group.

    With `health`, upkeep shares its `CountsCache` and refreshes the job and breaker gauges
    from the same sources and rules `/healthz` uses. `settings` is read at each prune, so a
    reload that assigns `upkeep.settings` changes the retention.
    """

    def __init__(
        self,
        store: UpkeepStore,
        *,
        clock: Clock,
        metrics: Metrics,
        settings: Settings,
        health: Health | None = None,
        min_retention: float = MIN_RETENTION,
        refresh_every: float = 60.0,
        checkpoint_every: float = 300.0,
        prune_every: float = 3600.0,
        optimize_every: float = DAY,
        wal_truncate_bytes: int = WAL_TRUNCATE_BYTES,
    ):
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.settings = settings
        self.health = health
        self.counts = health.counts if health is not None else CountsCache()
        self.min_retention = min_retention
        self.every = {
            "refresh": refresh_every,
            "checkpoint": checkpoint_every,
            "prune": prune_every,
            "optimize": optimize_every,
        }
        self.wal_truncate_bytes = wal_truncate_bytes
        self.wal_path = store.path.with_name(store.path.name + "-wal")
        self.turns = 0  # loop turns completed, for tests (`wait_turns`)
        self._turned = anyio.Event()
        self._failures: dict[str, int] = {}
        self._clamped: float | None = None  # the retention last reported as too short
        self._steps: Mapping[str, Callable[[], Awaitable[object]]] = {
            "refresh": self.refresh,
            "checkpoint": self.checkpoint,
            "prune": self.prune,
            "optimize": self.optimize,
        }

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Refresh at once, then every step on its period, until cancelled."""
        start = self.clock.monotonic()
        due = {
            "refresh": start,
            "prune": start + self.every["refresh"],  # off the start-up path, but every start
            "optimize": start + self.every["optimize"],
            "checkpoint": start + self.every["checkpoint"],
        }
        task_status.started()
        while True:
            now = self.clock.monotonic()
            for step in STEPS:
                if due[step] > now:
                    continue
                _, pruned = await self._step(step)
                due[step] = now + self.every[step]
                if step == "prune" and pruned:
                    due["checkpoint"] = now  # fold the deletions' WAL back in this turn
            self.turns += 1
            turned, self._turned = self._turned, anyio.Event()
            turned.set()
            await self.clock.sleep(min(due.values()) - self.clock.monotonic())

    async def run_once(self) -> dict[str, bool]:
        """Every step now, in loop order; returns which succeeded (tools, tests)."""
        return {step: (await self._step(step))[0] for step in STEPS}

    async def wait_turns(self, count: int) -> None:
        """Wait until the loop has completed `count` turns in all."""
        while self.turns < count:
            await self._turned.wait()

    async def _step(self, step: str) -> tuple[bool, bool]:
        """Run one step: (succeeded, did something that wants a checkpoint — a prune that
        deleted rows). A failure is logged and counted; a dead store propagates."""
        try:
            result = await self._steps[step]()
        except StoreError as exc:
            if not self.store.healthy:
                raise  # the writer died or the store is closing: not upkeep's to survive
            self._failed(step, exc)
            return False, False
        except Exception as exc:  # a supervision boundary: one step must not stop the others
            self._failed(step, exc)
            return False, False
        failures = self._failures.pop(step, 0)
        if failures:
            log.info("upkeep.recovered", step=step, failures=failures)
        return True, isinstance(result, dict) and any(result.values())

    def _failed(self, step: str, exc: Exception) -> None:
        self.metrics.upkeep_failed(step)
        failures = self._failures[step] = self._failures.get(step, 0) + 1
        error = f"{type(exc).__name__}: {exc}"
        if failures == 1:
            log.warning("upkeep.failed", step=step, error=error)
        else:
            log.debug("upkeep.failed", step=step, error=error, failures=failures)

    # -- the steps ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Counts, file sizes, job freshness and the breaker into the gauges and the cache."""
        events = await self.store.count_events_by_status()
        actions = await self.store.count_actions_by_status()
        self.counts.put(events, actions, at=self.clock.monotonic())
        self.metrics.set_counts(events, actions)
        self.metrics.set_database_size(_size(self.store.path), _size(self.wal_path))
        health = self.health
        if health is None:
            return
        now = self.clock.now()
        jobs: dict[str, tuple[datetime | None, bool]] = {}
        for job, schedule in health.current_jobs().items():
            last = await health.last_success(job)
            jobs[job] = (last, not health.freshness(schedule, last, now).ok)
        self.metrics.set_jobs(jobs)
        guard = health.current_guard()
        if guard is not None:
            self.metrics.set_breaker((await guard.breaker()).open)

    async def checkpoint(self) -> CheckpointResult:
        """PASSIVE; TRUNCATE as well once the WAL file is past `wal_truncate_bytes`."""
        before = _size(self.wal_path)
        busy, frames, done = await self.store.write(_passive, transactional=False)
        mode = "PASSIVE"
        if before > self.wal_truncate_bytes:
            if busy == 0 and done == frames:
                mode = "TRUNCATE"
                busy, frames, done = await self.store.checkpoint()
            else:
                log.warning(
                    "store.checkpoint_blocked",
                    wal_bytes=before,
                    frames=frames,
                    checkpointed=done,
                    reason="a reader still uses old WAL frames; the WAL cannot shrink yet",
                )
        result = CheckpointResult(mode, busy, frames, done, before, _size(self.wal_path))
        level = log.info if mode == "TRUNCATE" else log.debug
        level(
            "store.checkpointed",
            mode=mode,
            busy=busy,
            frames=frames,
            checkpointed=done,
            wal_bytes_before=before,
            wal_bytes_after=result.wal_after,
        )
        self.metrics.set_database_size(_size(self.store.path), result.wal_after)
        return result

    def horizon(self) -> float:
        """Seconds of history kept: `retention`, but never less than `min_retention`."""
        retention = float(self.settings.daemon.retention)
        if retention >= self.min_retention:
            return retention
        if self._clamped != retention:
            self._clamped = retention
            log.warning(
                "upkeep.retention_clamped",
                retention_s=retention,
                used_s=self.min_retention,
                reason="retention must outlast the gap filler's look-back, or a backfill "
                "would bring pruned events back as new",
            )
        return self.min_retention

    async def prune(self) -> dict[str, int]:
        """Delete history older than the horizon; returns rows deleted per table."""
        horizon = self.horizon()
        cutoff = self.clock.now() - timedelta(seconds=horizon)
        counts = await self.store.prune(cutoff)
        self.metrics.pruned(counts)
        level = log.info if any(counts.values()) else log.debug
        level("store.pruned", **counts, older_than=cutoff.isoformat(), retention_s=horizon)
        return counts

    async def optimize(self) -> None:
        await self.store.optimize()
        log.debug("store.optimized")
