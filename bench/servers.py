"""Simulators in their own process for the whole-process sync benchmarks.

    python -m bench.servers --blesta 20000 --halo 20000 --billomat 10000 --latency 0.02

Serves the Blesta, Halo and Billomat simulators (`daemon/sandbox/`) on loopback with that many
clients / tickets / clients, each request answered after `--latency` seconds (the simulators'
own `Faults.latency`), and prints one JSON line of where they are and their demo credentials,
then serves until killed. The server runs apart from the process being measured, so what is
measured is the client, not the simulator.

Blesta's clients are built directly (not through the demo generator, which also makes each
client's contacts, invoices and services): a 100,000-client server starts in about a second.
Halo and Billomat make their demo records on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

from bench.blesta_server import bulk_state
from daemon.sandbox.billomat_sim import BillomatState, serve_billomat
from daemon.sandbox.blesta_sim import make_app as make_blesta_app
from daemon.sandbox.halo_sim import HaloState, serve_halo
from daemon.sandbox.server import serve_app

BLESTA_USER = "sync"


async def serve(blesta: int, halo: int, billomat: int, latency: float) -> None:
    info: dict[str, Any] = {"latency": latency}
    async with AsyncExitStack() as stack:
        if blesta:
            state = bulk_state(blesta, latency)
            root = await stack.enter_async_context(serve_app(make_blesta_app(state)))
            info["blesta"] = {
                "url": root + "/api",
                "user": BLESTA_USER,
                "key": state.users[BLESTA_USER],
                "records": blesta,
            }
        if halo:
            hs = HaloState(demo_size=halo)
            hs.faults.latency = latency
            hs.table("tickets")  # build the records before the first measured request
            info["halo"] = {
                "url": await stack.enter_async_context(serve_halo(hs)),
                "client_id": hs.client_id,
                "client_secret": hs.client_secret,
                "tenant": "bench",
                "records": halo,
            }
        if billomat:
            # A generous quota: the benchmark repeats the same sync many times in one window.
            bs = BillomatState(demo_size=billomat, quota_registered=1_000_000)
            bs.faults.latency = latency
            bs.table("clients")
            app_id = sorted(bs.apps)[0]
            info["billomat"] = {
                "url": await stack.enter_async_context(serve_billomat(bs)),
                "billomat_id": bs.billomat_id,
                "api_key": sorted(bs.api_keys)[0],
                "app_id": app_id,
                "app_secret": bs.apps[app_id],
                "records": billomat,
            }
        print(json.dumps(info), flush=True)
        await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blesta", type=int, default=0, help="Blesta clients (0: no simulator)")
    p.add_argument("--halo", type=int, default=0, help="Halo tickets")
    p.add_argument("--billomat", type=int, default=0, help="Billomat clients")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added to each answer")
    a = p.parse_args()
    try:
        asyncio.run(serve(a.blesta, a.halo, a.billomat, a.latency))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
