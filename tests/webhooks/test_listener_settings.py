"""deps_from_settings: the listener's deps as the service builds them from the config."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.config import NETSAPIENS_MODELS, parse_settings
from daemon.errors import ConfigError
from daemon.store import Store
from daemon.webhooks.app import deps_from_settings
from tests.netsapiens_fixtures import T0

CONFIG = {
    "daemon": {"default_region": "GB"},
    "http": {"max_body_bytes": 65536, "trusted_proxies": ["10.0.0.0/8"]},
    "upstreams": {
        "netsapiens": {
            "api_url": "https://pbx.example.com",
            "client_id": "c",
            "client_secret": "${NS}",
            "username": "u",
            "password": "${NS}",
        }
    },
    "webhooks": {
        "netsapiens": {
            "secret": "${NEW}",
            "previous_secret": "${OLD}",
            "rotation_grace": "2h",
            "public_url": "https://hooks.example.com/webhooks/netsapiens",
            "allow_from": ["192.0.2.0/24"],
        }
    },
}
ENV = {"NS": "ns-secret-value", "NEW": "new-secret-0123456789", "OLD": "old-secret-0123456789"}


async def test_deps_from_settings(tmp_path: Path) -> None:
    settings = parse_settings(CONFIG, env=ENV, credentials_dir=None, base_dir=tmp_path)
    clock = FakeClock(T0)
    async with Store.open(tmp_path / "s.db", clock=clock) as store:
        deps = deps_from_settings(
            settings, inbox=store, clock=clock, on_events=lambda ids: None, loaded_at=T0
        )
    assert deps.max_body_bytes == 65536 and deps.default_region == "GB"
    assert deps.allow_from == (ipaddress.ip_network("192.0.2.0/24"),)
    assert deps.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert deps.models == frozenset(NETSAPIENS_MODELS)
    assert deps.secrets.matches(ENV["NEW"], T0)
    assert deps.secrets.matches(ENV["OLD"], T0 + timedelta(hours=2) - timedelta(seconds=1))
    assert not deps.secrets.matches(ENV["OLD"], T0 + timedelta(hours=2))


async def test_deps_need_the_webhook_table(tmp_path: Path) -> None:
    config = {k: v for k, v in CONFIG.items() if k != "webhooks"}
    settings = parse_settings(config, env=ENV, credentials_dir=None, base_dir=tmp_path)
    with pytest.raises(ConfigError):
        deps_from_settings(
            settings, inbox=None, clock=FakeClock(T0), on_events=lambda ids: None, loaded_at=T0
        )  # type: ignore[arg-type]
