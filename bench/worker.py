"""One measured sync, in a fresh process: `worker.py ours|peer URL DB [--concurrency N]`.

Prints one JSON line: seconds (the sync itself, interpreter start excluded, the same for both
sides), records in the database, peak RSS in MB, and for `ours` the run's counters.

- ours: daemon's BlestaClient + JobRunner (concurrent pages, one transaction per page).
- peer: blesta-sdk 0.6.0 `BlestaRequest.get_all` then one `executemany` transaction — what a
  script built on the public SDK does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import time
from pathlib import Path
from typing import Any

USER, KEY = "sync", "demo-blesta-key"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def ours(url: str, db: Path, concurrency: int) -> dict[str, Any]:
    from daemon.clients.blesta import BlestaClient
    from daemon.clients.http import HttpOptions
    from daemon.clock import SystemClock
    from daemon.config import SyncJob
    from daemon.store import Store
    from daemon.sync.runner import JobRunner
    from daemon.sync.strategies import build_fetcher

    clock = SystemClock()
    job = SyncJob.model_validate(
        {"name": "blesta-clients", "upstream": "blesta", "resource": "clients", "every": "1h"}
    )
    options = HttpOptions(timeout=30, max_retries=2, max_concurrency=concurrency)
    async with Store.open(db, clock=clock) as store:
        async with BlestaClient.create(url, USER, KEY, clock=clock, options=options) as client:
            runner = JobRunner(store, clock=clock)
            start = time.perf_counter()
            result = await runner.run(job, build_fetcher(job, client, "blesta", now=clock.now()))
            seconds = time.perf_counter() - start
    assert result.status == "ok", result.error
    return {"seconds": seconds, **result.counters()}


def peer(url: str, db: Path) -> dict[str, Any]:
    from blesta_sdk import BlestaRequest

    start = time.perf_counter()
    with BlestaRequest(url, USER, KEY) as api:
        records = api.get_all("clients", "getList", {}, on_error="raise")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, data TEXT)")
        conn.executemany(
            "INSERT OR REPLACE INTO clients VALUES (?, ?)",
            [(r["id"], json.dumps(r)) for r in records],
        )
    conn.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "fetched": len(records)}


def quiet_logs() -> None:
    """Log as `daemon run-once` does at the default level: info and above, not debug."""
    import logging
    import sys

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main() -> None:
    quiet_logs()
    p = argparse.ArgumentParser()
    p.add_argument("side", choices=["ours", "peer"])
    p.add_argument("url")
    p.add_argument("db", type=Path)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args()
    out = asyncio.run(ours(a.url, a.db, a.concurrency)) if a.side == "ours" else peer(a.url, a.db)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
