"""Durable webhook ingest, the store's share: `insert_events` at 64 concurrent callers.

Each caller is one webhook request in a loop: it inserts one event (a realistic NetSapiens
message payload, ~0.6 kB) and waits until it is committed, as the listener must before its 2xx.
Latency is measured per call, from the call to its return. Each mode runs on a fresh database
file in `--dir` (default: the system temporary directory; use a directory on the disk the
service will use, since fsync cost is the point):

- `NORMAL` and `FULL`: `PRAGMA synchronous` with the store's batched ingest (one INSERT per
  group of callers); what the 2xx promises differs (docs/database.md, "Durability").
- `per-caller`, with `--baseline`: the ingest as it was before issue 16: one SAVEPOINT and
  INSERT (and SELECT) per caller inside the shared transaction, SQLite's automatic checkpoints
  inside the commits, `synchronous = NORMAL`.

    python bench/store_ingest.py                # 64 callers, 3 rounds of 5 s per mode
    python bench/store_ingest.py --quick        # CI smoke size: one round of 1 s
    python bench/store_ingest.py --baseline --json

Target (issue 16): the whole listener at 64 connections must reach 0.6x a no-op aiohttp
handler's requests/s with p99 <= 25 ms, so the store's p99 here must be a small part of that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from daemon.clock import SystemClock
from daemon.store import InsertedEvent, NewEvent, Store, to_db
from daemon.store.db import Synchronous

PAYLOAD = json.dumps(
    {
        "remote": "15551230000",
        "dialed": "15559870000",
        "term_user": "100",
        "domain": "example.com",
        "session-id": "8d9f3c0e-6a1b-4f5e-9c7d-2a1b3c4d5e6f",
        "message": "Hi, what is my balance? I paid last week and want to check it went through.",
        "timestamp": "2025-01-02 03:04:05",
        "direction": "inbound",
        "type": "sms",
        "carrier": "example-carrier",
        "media": [],
        "user": "100",
        "territory": "example",
        "from_name": "Ann Example",
        "to_name": "Support",
        "status": "received",
    },
    separators=(",", ":"),
)


@dataclass
class Result:
    mode: str
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    commits: int
    largest_group: int

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def mean_group(self) -> float:
        return self.calls / max(1, self.commits)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def _per_caller(store: Store, event: NewEvent) -> list[InsertedEvent]:
    """Before issue 16: a groupable job per caller, so a SAVEPOINT, INSERT and maybe SELECT
    each inside the shared transaction."""
    row = (event.source, event.kind, event.dedupe_key, to_db(event.received_at), event.payload)

    async def fn(conn: aiosqlite.Connection) -> list[InsertedEvent]:
        async with conn.execute(
            "INSERT INTO events (source, kind, dedupe_key, received_at, payload) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
            row,
        ) as cur:
            if cur.rowcount == 1 and cur.lastrowid is not None:
                return [InsertedEvent(int(cur.lastrowid), event.dedupe_key, False)]
        async with conn.execute(
            "SELECT id FROM events WHERE dedupe_key = ?", (event.dedupe_key,)
        ) as cur:
            found = await cur.fetchone()
        assert found is not None
        return [InsertedEvent(int(found[0]), event.dedupe_key, True)]

    return await store.write(fn, groupable=True)


async def _as_before(store: Store) -> None:
    """The store as it was: SQLite checkpointing inside commits, no checkpoints beside them."""
    assert store._checkpoints is not None
    store._checkpoints.every = 2**62

    async def fn(conn: aiosqlite.Connection) -> None:
        await conn.execute("PRAGMA wal_autocheckpoint = 1000")

    await store.write(fn, transactional=False)


async def run_mode(mode: str, directory: Path, callers: int, seconds: float) -> Result:
    synchronous: Synchronous = "NORMAL" if mode != "FULL" else "FULL"
    path = directory / f"ingest-{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    async with Store.open(path, clock=SystemClock(), synchronous=synchronous) as store:
        insert: Callable[[NewEvent], Awaitable[Any]]
        if mode == "per-caller":
            await _as_before(store)
            insert = lambda e: _per_caller(store, e)  # noqa: E731
        else:
            insert = lambda e: store.insert_events([e])  # noqa: E731
        now = datetime.now(UTC)
        latencies: list[float] = []
        warm_until = time.perf_counter() + min(0.5, seconds / 4)
        stop_at = warm_until + seconds
        counted = {"commits": 0}

        async def caller(n: int) -> None:
            i = 0
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                event = NewEvent("netsapiens", "message.received", f"{n}:{i}", PAYLOAD, now,
                                 sender=f"+1555{n:07d}", body_hash="h")  # fmt: skip
                await insert(event)
                if started >= warm_until:
                    latencies.append(time.perf_counter() - started)
                i += 1

        async def mark_commits() -> None:
            delay = max(0.0, warm_until - time.perf_counter())
            await asyncio.sleep(delay)
            counted["commits"] = store.stats.commits

        await asyncio.gather(mark_commits(), *(caller(n) for n in range(callers)))
        commits = store.stats.commits - counted["commits"]
        largest = store.stats.largest_group
    latencies.sort()
    return Result(
        mode=mode,
        calls=len(latencies),
        seconds=seconds,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=latencies[-1] * 1000,
        commits=commits,
        largest_group=largest,
    )


def _median_result(mode: str, runs: list[Result]) -> Result:
    """The median of each figure over the rounds (rounds alternate the modes, so a noisy
    moment on the machine does not land on one mode only)."""
    med = statistics.median
    return Result(
        mode=mode,
        calls=round(med(r.calls for r in runs)),
        seconds=runs[0].seconds,
        p50_ms=med(r.p50_ms for r in runs),
        p99_ms=med(r.p99_ms for r in runs),
        max_ms=med(r.max_ms for r in runs),
        commits=round(med(r.commits for r in runs)),
        largest_group=max(r.largest_group for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, interleaved")
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--baseline", action="store_true", help="also the pre-issue-16 ingest")
    parser.add_argument("--quick", action="store_true", help="CI smoke size: one 1 s round")
    parser.add_argument("--json", action="store_true", help="one JSON object per mode")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    modes = ["NORMAL", "FULL", *(["per-caller"] if args.baseline else [])]
    runs: dict[str, list[Result]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(rounds):
            for mode in modes:
                runs[mode].append(asyncio.run(run_mode(mode, Path(tmp), args.callers, seconds)))
    results = [_median_result(m, runs[m]) for m in modes]
    if args.json:
        for r in results:
            print(json.dumps({**r.__dict__, "per_second": r.per_second}))
        return
    versions = f"sqlite {aiosqlite.sqlite_version}, python {sys.version.split()[0]}"
    print(f"insert_events, {args.callers} concurrent callers, median of {rounds} x {seconds:g} "
          f"s per mode, {versions}")  # fmt: skip
    print(f"{'mode':<11} {'inserts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'per commit':>11}")  # fmt: skip
    for r in results:
        print(f"{r.mode:<11} {r.per_second:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.max_ms:>8.2f} {r.mean_group:>11.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
