"""Fixtures for the HTTP core, Blesta and Reseller tests: simulators on loopback, fake clocks.

`blesta_state` / `reseller_state` are plain state objects a test may tweak before the server
starts (they are the same objects the running simulator reads, so later changes apply too).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon.clients.blesta import BlestaClient
from daemon.clients.blesta_reseller import ResellerClient
from daemon.clients.http import HttpOptions
from daemon.clock import FakeClock
from daemon.config import BlestaUpstream, ResellerUpstream
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.blesta_sim import make_app as make_blesta_app
from daemon.sandbox.reseller_sim import BASE_PATH as RESELLER_PATH
from daemon.sandbox.reseller_sim import ResellerState
from daemon.sandbox.reseller_sim import make_app as make_reseller_app
from daemon.sandbox.server import serve_app

BLESTA_USER, BLESTA_KEY = "sync", "demo-blesta-key"
RESELLER_USER, RESELLER_PASSWORD = "reseller", "demo-reseller-pass"


def fast_options(**kw: Any) -> HttpOptions:
    """Small timeouts and retries so failure paths finish in milliseconds."""
    values: dict[str, Any] = {"timeout": 5.0, "max_retries": 3, "max_concurrency": 4}
    values.update(kw)
    return HttpOptions(**values)


def blesta_settings(url: str, **overrides: Any) -> BlestaUpstream:
    """An `[upstreams.blesta]` table shaped like the config model."""
    values: dict[str, Any] = {
        "name": "blesta",
        "kind": "blesta",
        "url": url,
        "user": BLESTA_USER,
        "key": BLESTA_KEY,
        "auth": "basic",
        "timeout": 5.0,
        "max_retries": 3,
        "max_concurrency": 4,
        "rate_limit": None,
    }
    values.update(overrides)
    return BlestaUpstream.model_validate(values)


def reseller_settings(url: str, **overrides: Any) -> ResellerUpstream:
    values: dict[str, Any] = {
        "name": "reseller",
        "kind": "blesta_reseller",
        "url": url,
        "user": RESELLER_USER,
        "password": RESELLER_PASSWORD,
        "timeout": 5.0,
        "max_retries": 3,
        "max_concurrency": 4,
        "rate_limit": None,
    }
    values.update(overrides)
    return ResellerUpstream.model_validate(values)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(autojump=True)


@pytest.fixture
def blesta_state() -> BlestaState:
    return BlestaState.demo(clients=41, seed=7)


@pytest.fixture
async def blesta_sim(blesta_state: BlestaState) -> AsyncIterator[str]:
    """Base URL of a running Blesta simulator (the API root, ending in /api)."""
    async with serve_app(make_blesta_app(blesta_state)) as url:
        yield url + "/api"


@pytest.fixture
async def blesta(blesta_sim: str, fake_clock: FakeClock) -> AsyncIterator[BlestaClient]:
    client = BlestaClient.create(
        blesta_sim,
        BLESTA_USER,
        BLESTA_KEY,
        clock=fake_clock,
        options=fast_options(),
    )
    client.session._rng = random.Random(1)
    async with client:
        yield client


@pytest.fixture
def reseller_state() -> ResellerState:
    return ResellerState.demo(licenses=30, seed=3)


@pytest.fixture
async def reseller_sim(reseller_state: ResellerState) -> AsyncIterator[str]:
    """Base URL of a running Reseller simulator (…/plugin/blesta_reseller/v2/index)."""
    async with serve_app(make_reseller_app(reseller_state)) as url:
        yield url + RESELLER_PATH


@pytest.fixture
async def reseller(reseller_sim: str, fake_clock: FakeClock) -> AsyncIterator[ResellerClient]:
    client = ResellerClient.create(
        reseller_sim, RESELLER_USER, RESELLER_PASSWORD, clock=fake_clock, options=fast_options()
    )
    async with client:
        yield client
