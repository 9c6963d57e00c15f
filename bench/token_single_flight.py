"""Token refresh under load: concurrent callers per token request when the token has expired.

    python -m bench.token_single_flight [--callers 200]

DESIGN §5: any number of concurrent callers that find the token stale cause one token request.
For Halo (client credentials) and NetSapiens (password grant, then refresh token), against their
simulators on loopback: one call obtains a token, the token then expires — by the client's clock
(time moves past its lifetime) or server-side (the simulator forgets it, so every caller gets a
401) — and `--callers` calls start at once. The figure is callers / token requests they caused
(target 200 : 1). `tests/clients/test_halo.py` and `test_netsapiens.py` assert the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from daemon.clock import FakeClock
from daemon.config.upstreams import HaloUpstream, NetsapiensUpstream

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


async def halo(callers: int, how: str) -> dict[str, Any]:
    from daemon.clients.halo import HaloClient
    from daemon.sandbox.halo_sim import HaloState, serve_halo

    clock = FakeClock(T0, autojump=True)
    state = HaloState(demo_size=3, token_ttl=600, now=clock.monotonic)
    async with serve_halo(state) as url:
        cfg = HaloUpstream.model_validate(
            {
                "name": "halo",
                "kind": "halo",
                "tenant_url": url,
                "client_id": state.client_id,
                "client_secret": state.client_secret,
                "max_concurrency": 20,
            }
        )
        async with HaloClient.from_settings(cfg, clock=clock) as client:
            await client.tickets.list()
            before = state.stats.token_requests
            if how == "client clock":
                clock.advance(601)
            else:
                state.expire_tokens()
            results = await asyncio.gather(*(client.tickets.get(1) for _ in range(callers)))
    assert all(r["id"] == 1 for r in results)
    return {"upstream": "halo", "expiry": how, "callers": callers,
            "token_requests": state.stats.token_requests - before}  # fmt: skip


async def netsapiens(callers: int, how: str) -> dict[str, Any]:
    from daemon.clients.netsapiens import NetsapiensClient
    from daemon.sandbox.netsapiens_sim import NetsapiensState, serve_netsapiens

    clock = FakeClock(T0, autojump=True)
    state = NetsapiensState(now=clock.monotonic, wall=clock.now)
    async with serve_netsapiens(state) as url:
        cfg = NetsapiensUpstream.model_validate(
            {
                "name": "netsapiens",
                "kind": "netsapiens",
                "api_url": url,
                "client_id": state.client_id,
                "client_secret": state.client_secret,
                "username": state.username,
                "password": state.password,
                "max_concurrency": 8,
            }
        )
        async with NetsapiensClient.from_settings(cfg, clock=clock) as client:
            await client.get_messages()
            before = state.stats.token_requests
            if how == "client clock":
                clock.advance(state.token_ttl + 1)
            else:
                state.expire_tokens()
            await asyncio.gather(*(client.get_messages() for _ in range(callers)))
    return {"upstream": "netsapiens", "expiry": how, "callers": callers,
            "token_requests": state.stats.token_requests - before}  # fmt: skip


async def measure(callers: int) -> list[dict[str, Any]]:
    out = []
    for fn in (halo, netsapiens):
        for how in ("client clock", "server side"):
            out.append(await fn(callers, how))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callers", type=int, default=200)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from daemon.logs import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)
    rows = asyncio.run(measure(a.callers))
    for r in rows:
        if a.json:
            print(json.dumps(r))
        else:
            ratio = r["callers"] / max(1, r["token_requests"])
            print(
                f"{r['upstream']:<11} expired by {r['expiry']:<13} {r['callers']} callers, "
                f"{r['token_requests']} token request(s): {ratio:.0f} : 1 (target 200 : 1)"
            )


if __name__ == "__main__":
    main()
