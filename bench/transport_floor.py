"""The transport floor: the same pages fetched by bare aiohttp at the same concurrency.

    python -m bench.transport_floor [--only blesta,halo,billomat] [--quick]

The ideal bound (pages x latency / concurrency) counts only the 20 ms the simulator adds. A
real exchange also pays the simulator's own answer (about 1.5 ms for a Blesta page: routing,
auth, JSON) and both processes' turns on a 2-core machine with 8 requests in flight. This
measures that floor directly: an aiohttp session with the same credentials asks for page 1
(after Halo's token), then the remaining pages with `max_concurrency` (8) in flight, reads each
body and does nothing else — no parsing, no hashing, no database. The sync's own run duration
divided by this is what the daemon itself adds on top of the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.procs import simulators

Fetch = Callable[[int], Awaitable[None]]


async def _pager(upstream: str, sim: dict[str, Any], s: aiohttp.ClientSession) -> Fetch:
    """`fetch(page_no)` for `upstream`, authenticated as the daemon's client would be."""
    cfg = sim[upstream]
    if upstream == "blesta":
        url = cfg["url"].rstrip("/") + "/clients/getList.json"
        headers = {"Authorization": aiohttp.encode_basic_auth(cfg["user"], cfg["key"])}

        def params(p: int) -> dict[str, str]:
            return {"page": str(p)}

    elif upstream == "halo":
        base = cfg["url"].rstrip("/")
        form = {
            "grant_type": "client_credentials",
            "client_id": cfg["client_id"],
            "client_secret": cfg["client_secret"],
            "scope": "all",
        }
        async with s.post(f"{base}/auth/token", data=form) as r:
            r.raise_for_status()
            token = (await r.json())["access_token"]
        url, headers = f"{base}/api/Tickets", {"Authorization": f"Bearer {token}"}

        def params(p: int) -> dict[str, str]:
            return {"pageinate": "true", "page_size": "50", "page_no": str(p)}

    else:
        url = cfg["url"].rstrip("/") + "/clients"
        headers = {
            "X-BillomatApiKey": cfg["api_key"],
            "X-AppId": cfg["app_id"],
            "X-AppSecret": cfg["app_secret"],
            "Accept": "application/json",
        }

        def params(p: int) -> dict[str, str]:
            return {"page": str(p), "per_page": "1000"}

    async def fetch(page_no: int) -> None:
        async with s.get(url, params=params(page_no), headers=headers) as r:
            r.raise_for_status()
            await r.read()

    return fetch


async def _walk(upstream: str, sim: dict[str, Any], pages: int, concurrency: int) -> float:
    async with aiohttp.ClientSession() as s:
        started = time.perf_counter()
        fetch = await _pager(upstream, sim, s)  # Halo's token is part of the walk
        await fetch(1)
        slots = asyncio.Semaphore(concurrency)

        async def one(page_no: int) -> None:
            async with slots:
                await fetch(page_no)

        await asyncio.gather(*(one(p) for p in range(2, pages + 1)))
        return time.perf_counter() - started


def floor(
    upstream: str, sim: dict[str, Any], pages: int, *, concurrency: int, runs: int = 3
) -> float:
    """Median seconds of `runs` bare walks over `pages` pages."""
    return statistics.median(
        asyncio.run(_walk(upstream, sim, pages, concurrency)) for _ in range(runs)
    )


def main() -> None:
    # The sizes are the sync comparison's (which imports this module, hence here).
    from bench.sync_peers import CONCURRENCY, FULL_SIZE, PAGE_SIZE, QUICK_SIZE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="blesta,halo,billomat")
    p.add_argument("--quick", action="store_true", help="2,000 records each")
    a = p.parse_args()
    for upstream in a.only.split(","):
        n = (QUICK_SIZE if a.quick else FULL_SIZE)[upstream]
        pages = math.ceil(n / PAGE_SIZE[upstream])
        with simulators(**{upstream: n}) as sim:
            seconds = floor(upstream, sim, pages, concurrency=CONCURRENCY)
        ideal = pages * 0.02 / CONCURRENCY
        row = {"upstream": upstream, "records": n, "floor_s": round(seconds, 3), "ideal_s": ideal}
        print(json.dumps({**row, "floor_vs_ideal": round(seconds / ideal, 3)}))


if __name__ == "__main__":
    main()
