"""Issue 18, soak: the whole service in process (`Service`, as `daemon run` builds it) against the
sandbox's simulators, on the injected clock, through three hours of mixed traffic: a minute at
a time, SMS arrive at the PBX (which posts them to the listener: hellos answered by SMS,
problem reports made tickets and notes), while the nine sync jobs run on their schedules and
upkeep refreshes, checkpoints and prunes.

Retention is the shortest the config allows (1 h), the upkeep's floor (the gap filler's 8-day
look-back) lowered to match and pruning every 10 minutes, so the events and actions tables
must stop growing after the first hour. Checked every 10 clock-minutes after that warm-up:
the process's RSS stays flat, the WAL stays under 64 MB, the inbox, actions and sync runs stay
within what an hour of retention holds, and the file stops growing.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from daemon.clock import FakeClock
from daemon.config import load_settings
from daemon.sandbox.orchestra import run_sandbox
from daemon.service import Running, Service
from tests.localnet import free_port
from tests.reliability.harness import OURS

HOURS = 3
STEP = 60.0  # seconds of clock per step
PER_STEP = 4  # SMS arriving per step: 240 an hour
WARM_UP = 70  # steps: an hour of retention plus one prune period
SAMPLE = 10  # steps between checkpoints
MiB = 1024 * 1024
STRANGERS = ("15550001000", "15550002000", "15550003000")


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


@dataclass
class Sample:
    step: int
    rss: int
    db: int
    wal: int
    events: int
    actions: int
    runs: int


async def _idle(run: Running) -> None:
    """The step's work is done: nothing in flight, no sync running, nothing due in the inbox
    (bounded polling of the service's state)."""
    with anyio.fail_after(30):
        while True:
            await asyncio.sleep(0.005)
            if run.dispatcher.in_flight or (run.scheduler and run.scheduler.running):
                continue
            if await run.store.list_events("pending", 1):
                continue
            return


async def _count(run: Running, table: str) -> int:
    row = await run.store.fetchone(f"SELECT COUNT(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


@pytest.mark.slow  # CI runs it (plain `pytest -q`); `-m 'not slow'` skips it locally
async def test_three_clock_hours_of_traffic_stay_flat(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    port = free_port()
    async with run_sandbox(tmp_path, now=clock.now(), listen=f"127.0.0.1:{port}") as sb:
        ns, halo = sb.netsapiens, sb.halo
        ns.wall, ns.now, halo.now = clock.now, clock.monotonic, clock.monotonic
        text = sb.config_path.read_text().replace('\nrate_limit = "300/5m"\n', "\n", 1)
        sb.config_path.write_text(text.replace("[daemon]\n", '[daemon]\nretention = "1h"\n', 1))
        settings = load_settings(sb.config_path)
        db = Path(settings.daemon.database)
        wal = db.with_name(db.name + "-wal")
        service = Service(settings, clock=clock, config_path=sb.config_path,
                          handle_signals=False)  # fmt: skip
        samples: list[Sample] = []
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            run = service.running
            assert run is not None and run.upkeep is not None and run.scheduler is not None
            run.upkeep.min_retention = 3600.0
            run.upkeep.every["prune"] = 600.0
            with anyio.fail_after(10):
                while not ns.live_subscriptions("message"):
                    await asyncio.sleep(0.01)
            clients = [
                str(r["phone"]).lstrip("+")
                for r in await run.store.fetchall("SELECT DISTINCT phone FROM contacts")
            ]
            await _idle(run)
            for step in range(1, int(HOURS * 3600 / STEP) + 1):
                for i in range(PER_STEP):
                    if i == 0 and clients:
                        await ns.inbound_sms(clients[step % len(clients)], OURS, "hello")
                    else:
                        who = STRANGERS[(step + i) % len(STRANGERS)]
                        await ns.inbound_sms(who, OURS, f"problem {step}.{i}")
                clock.advance(STEP)
                await _idle(run)
                if step % SAMPLE == 0:
                    samples.append(
                        Sample(step, rss(), size(db), size(wal), await _count(run, "events"),
                               await _count(run, "actions"), await _count(run, "sync_runs"))
                    )  # fmt: skip
            service.request_shutdown()

    print("step rss_MiB db_KiB wal_KiB events actions runs")
    for s in samples:
        print(s.step, round(s.rss / MiB, 1), s.db // 1024, s.wal // 1024, s.events, s.actions,
              s.runs)  # fmt: skip
    warm = [s for s in samples if s.step >= WARM_UP]
    per_hour = PER_STEP * 3600 / STEP
    assert all(s.wal < 64 * MiB for s in samples)
    # An hour of retention plus a prune period and a step in flight, and no more.
    bound = per_hour * (1 + 600 / 3600) + 2 * PER_STEP
    assert all(s.events <= bound and s.actions <= bound for s in warm), warm
    assert max(s.runs for s in warm) <= 2 * min(s.runs for s in warm), warm
    assert warm[-1].events >= per_hour * 0.9  # the traffic really went on
    # Flat: after the warm-up the file and the process grow by no more than noise.
    assert warm[-1].db <= warm[0].db * 1.25 + MiB, warm
    assert max(s.rss for s in warm) - warm[0].rss < 8 * MiB, warm
