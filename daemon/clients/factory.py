"""Build upstream clients from configuration.

The only place that maps an upstream `kind` to its client class, so `service.py`, `run-once`
and `daemon api` open clients the same way. Clients are async context managers owning their
session; `open_clients` registers each on the caller's exit stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

from daemon.clock import Clock
from daemon.config.upstreams import UpstreamSettings
from daemon.errors import ConfigError

if TYPE_CHECKING:  # imported lazily below: `daemon --help` must not load every client
    from daemon.clients.billomat import BillomatClient
    from daemon.clients.blesta import BlestaClient
    from daemon.clients.blesta_reseller import ResellerClient
    from daemon.clients.halo import HaloClient
    from daemon.clients.netsapiens import NetsapiensClient
    from daemon.config import Settings

    AnyClient = BlestaClient | ResellerClient | BillomatClient | HaloClient | NetsapiensClient

CLIENT_CLASSES: dict[str, tuple[str, str]] = {
    "blesta": ("daemon.clients.blesta", "BlestaClient"),
    "blesta_reseller": ("daemon.clients.blesta_reseller", "ResellerClient"),
    "billomat": ("daemon.clients.billomat", "BillomatClient"),
    "halo": ("daemon.clients.halo", "HaloClient"),
    "netsapiens": ("daemon.clients.netsapiens", "NetsapiensClient"),
}


def client_class(kind: str) -> Any:
    try:
        module_name, class_name = CLIENT_CLASSES[kind]
    except KeyError:
        raise ConfigError(f"no client for upstream kind {kind!r}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_client(upstream: UpstreamSettings, *, clock: Clock) -> AnyClient:
    """An unopened client for one `[upstreams.<name>]` table."""
    return cast("AnyClient", client_class(upstream.kind).from_settings(upstream, clock=clock))


async def open_clients(
    settings: Settings, names: Iterable[str], *, clock: Clock, stack: AsyncExitStack
) -> dict[str, AnyClient]:
    """Open a client per upstream name; each closes when `stack` unwinds."""
    clients: dict[str, AnyClient] = {}
    for name in dict.fromkeys(names):
        try:
            upstream = settings.upstreams[name]
        except KeyError:
            raise ConfigError(f"unknown upstream {name!r}") from None
        clients[name] = await stack.enter_async_context(build_client(upstream, clock=clock))
    return clients


def first_of_kind(settings: Settings, kind: str, explicit: str | None = None) -> str:
    """The upstream `daemon api <kind>` talks to: `--upstream NAME`, else the first of its kind."""
    if explicit:
        up = settings.upstreams.get(explicit)
        if up is None or up.kind != kind:
            raise ConfigError(f"--upstream {explicit!r} is not a configured {kind} upstream")
        return explicit
    for name, up in settings.upstreams.items():
        if up.kind == kind:
            return str(name)
    raise ConfigError(f"no upstream of kind {kind!r} in the configuration")
