"""A Blesta simulator in its own process for the benchmarks: `--clients N --latency S`.

Prints its API URL on the first line of stdout, then serves until killed. Clients are built
directly (not through the demo generator) so a 100,000-record server starts in about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from daemon.sandbox.blesta_sim import BlestaState, make_app
from daemon.sandbox.server import serve_app


def bulk_state(clients: int, latency: float) -> BlestaState:
    state = BlestaState()
    state.clients = [
        {
            "id": str(i),
            "id_code": str(1500 + i),
            "user_id": str(i),
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "company": f"Company {i % 997} LLC",
            "email": f"user{i}@example.com",
            "phone": f"+1555{i % 10_000_000:07d}",
            "status": "active",
            "client_group_id": "1",
            "date_added": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} 10:00:00",
        }
        for i in range(1, clients + 1)
    ]
    state.faults.latency = latency
    return state


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=20_000)
    p.add_argument("--latency", type=float, default=0.02)
    args = p.parse_args()
    state = bulk_state(args.clients, args.latency)
    async with serve_app(make_app(state)) as url:
        print(url + "/api", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
