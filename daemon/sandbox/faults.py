"""Fault injection shared by every simulator.

Tests (and `daemon sandbox` users) turn faults on through the object directly, or over HTTP with
`POST /__sim__/faults` (JSON body with any of the `Faults` fields), so a CLI in a subprocess can
be exercised against a misbehaving upstream too. `GET /__sim__/stats` returns the counters.

Two kinds of fault: counters (`*_next`) hit exactly the next N requests, for tests that need a
precise sequence; ratios (`*_ratio`, a probability per request) make a steadily flaky upstream
for soak runs and benchmarks. Ratios draw from `random.Random(seed)`, so a given seed and
request order always fail the same requests; setting `seed` restarts the sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTROL_PREFIX = "/__sim__/"


@dataclass
class Faults:
    """What the next requests will suffer. Counters (`*_next`) are consumed one per request."""

    latency: float = 0.0  # seconds added to every response
    fail_next: int = 0  # next N requests answer `fail_status`
    fail_status: int = 503
    rate_limit_next: int = 0  # next N requests answer 429
    retry_after: str | None = "1"  # Retry-After header on injected 429s (None: no header)
    drop_next: int = 0  # next N requests: the connection is closed without an answer
    slow_next: int = 0  # next N requests wait `slow_seconds` before answering
    slow_seconds: float = 5.0
    html_next: int = 0  # next N requests answer a 502 HTML page, as a proxy would
    # next N requests are carried out, then answered 502 as if the answer was lost on the way:
    # the upstream acted but the client cannot know (an uncertain outcome)
    lose_answer_next: int = 0
    lose_answer_ratio: float = 0.0
    path_filter: str | None = None  # only requests whose path contains this are affected
    fail_ratio: float = 0.0  # each request answers `fail_status` with this probability
    drop_ratio: float = 0.0  # each request's connection is dropped with this probability
    slow_ratio: float = 0.0  # each request waits `slow_seconds` with this probability
    seed: int | None = None  # seeds the ratios' random sequence (None: unpredictable)

    def __post_init__(self) -> None:
        self._check(dataclasses.asdict(self))
        self._rng = random.Random(self.seed)

    def update(self, values: dict[str, Any]) -> None:
        """Set fields (as `POST /__sim__/faults` does); rejects unknown names and bad values
        before changing anything."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        self._check(values)
        for k, v in values.items():
            setattr(self, k, v)
        if "seed" in values:
            self._rng = random.Random(self.seed)

    @staticmethod
    def _check(values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name.endswith("_ratio"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number from 0 to 1")
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name} must be from 0 to 1, not {value}")
            elif name.endswith("_next") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number")
            elif name == "seed" and value is not None and not isinstance(value, int):
                raise ValueError("seed must be a whole number or null")

    def chance(self, ratio: float) -> bool:
        """One draw: True with probability `ratio` (no draw at all when it is 0 or 1, so
        unrelated settings do not shift a seeded sequence)."""
        if ratio <= 0.0:
            return False
        if ratio >= 1.0:
            return True
        return self._rng.random() < ratio


@dataclass
class SimStats:
    """Counters tests read: requests by path, token requests, injected faults."""

    requests: Counter[str] = field(default_factory=Counter)
    token_requests: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "total_requests": sum(self.requests.values()),
            "token_requests": self.token_requests,
            "faults_injected": dict(self.faults_injected),
        }


def _take(faults: Faults, name: str) -> bool:
    """Consume one of the `name` counter's requests, else roll its `*_ratio` (if any)."""
    n = getattr(faults, name)
    if n > 0:
        setattr(faults, name, n - 1)
        return True
    ratio = name.replace("_next", "_ratio")
    return hasattr(faults, ratio) and faults.chance(getattr(faults, ratio))


def fault_middleware(faults: Faults, stats: SimStats) -> Any:
    """An aiohttp middleware applying `faults` and counting requests into `stats`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await _control(request, faults, stats)
        stats.requests[request.path] += 1
        if faults.path_filter and faults.path_filter not in request.path:
            return await handler(request)
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if _take(faults, "drop_next"):
            stats.faults_injected["drop"] += 1
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # aiohttp treats this as a dropped connection
        if _take(faults, "slow_next"):
            stats.faults_injected["slow"] += 1
            await asyncio.sleep(faults.slow_seconds)
        if _take(faults, "rate_limit_next"):
            stats.faults_injected["429"] += 1
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return web.json_response(
                {"message": "Too Many Requests", "response": None}, status=429, headers=headers
            )
        if _take(faults, "fail_next"):
            stats.faults_injected[str(faults.fail_status)] += 1
            return web.json_response(
                {"message": "injected failure", "response": None}, status=faults.fail_status
            )
        if _take(faults, "lose_answer_next"):
            stats.faults_injected["lost_answer"] += 1
            await handler(request)  # it happened...
            return web.json_response(  # ...but the answer never makes it back
                {"message": "upstream timed out", "response": None}, status=502
            )
        if _take(faults, "html_next"):
            stats.faults_injected["html"] += 1
            return web.Response(
                status=502,
                text="<html><head><title>502 Bad Gateway</title></head>"
                "<body><h1>Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        return await handler(request)

    return middleware


async def _control(request: web.Request, faults: Faults, stats: SimStats) -> web.Response:
    name = request.path[len(CONTROL_PREFIX) :]
    if name == "faults" and request.method == "POST":
        try:
            faults.update(json.loads(await request.text() or "{}"))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(faults))
    if name == "faults":
        return web.json_response(dataclasses.asdict(faults))
    if name == "stats":
        return web.json_response(stats.as_dict())
    raise web.HTTPNotFound()
