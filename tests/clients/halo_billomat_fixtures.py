"""Fixtures and settings builders for the Halo and Billomat client tests.

The simulators run on loopback (port 0); settings are the real config models, so the clients
are built exactly as the service builds them (and a renamed config field breaks these tests).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import BillomatUpstream, HaloUpstream
from daemon.sandbox.billomat_sim import BillomatState, serve_billomat
from daemon.sandbox.halo_sim import HaloState, serve_halo

__all__ = [
    "billomat_settings",
    "billomat_sim",
    "billomat_state",
    "halo_settings",
    "halo_sim",
    "halo_state",
    "run_cli",
    "write_config",
]


def halo_settings(url: str, **overrides: Any) -> HaloUpstream:
    """An `[upstreams.halo]` table pointing at a simulator."""
    values: dict[str, Any] = {
        "name": "halo",
        "kind": "halo",
        "tenant_url": url,
        "client_id": "halo-client",
        "client_secret": "halo-secret",
        "scope": "all",
        "tenant": "",
        "timeout": 10.0,
        "max_retries": 3,
        "max_concurrency": 4,
        "rate_limit": None,
    }
    values.update(overrides)
    return HaloUpstream.model_validate(values)


def billomat_settings(url: str, **overrides: Any) -> BillomatUpstream:
    """An `[upstreams.billomat]` table pointing at a simulator (`url` is the API base)."""
    values: dict[str, Any] = {
        "name": "billomat",
        "kind": "billomat",
        "billomat_id": "demo",
        "api_key": "demo-key",
        **({"url": url} if url else {}),
        "max_rate_wait": 900.0,
        "timeout": 10.0,
        "max_retries": 3,
        "max_concurrency": 4,
        "rate_limit": None,
    }
    values.update(overrides)
    return BillomatUpstream.model_validate(values)


@pytest.fixture
def halo_state() -> HaloState:
    return HaloState(demo_size=120)


@pytest.fixture
async def halo_sim(halo_state: HaloState) -> AsyncIterator[str]:
    """The tenant URL of a running Halo simulator over `halo_state`."""
    async with serve_halo(halo_state) as url:
        yield url


@pytest.fixture
def billomat_state() -> BillomatState:
    return BillomatState(demo_size=60)


@pytest.fixture
async def billomat_sim(billomat_state: BillomatState) -> AsyncIterator[str]:
    """The API base URL of a running Billomat simulator over `billomat_state`."""
    async with serve_billomat(billomat_state) as url:
        yield url


def write_config(tmp_path: Path, body: str) -> Path:
    """A config file readable only by us (the loader refuses group/world-readable secrets)."""
    path = tmp_path / "daemon.toml"
    path.write_text(body)
    path.chmod(0o600)
    return path


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m daemon ARGS` without blocking the loop that serves the simulator."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
