"""The event path's parts wired in process from a config, as the service wires them: the store,
the upstream clients, the dispatcher, the real listener on `port` and the keeper's subscriptions
(synced once). Shared by `tests/events` (simulators of its own) and `tests/reliability` (the
sandbox's), which drive the dispatcher themselves instead of running the service."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from daemon.clients.factory import open_clients
from daemon.clock import Clock
from daemon.config import Settings
from daemon.rules.dispatcher import Dispatcher
from daemon.rules.wiring import RulesHolder, build_dispatcher
from daemon.sandbox.server import serve_app
from daemon.store import Store
from daemon.webhooks.app import deps_from_settings, make_app
from daemon.webhooks.keeper import SubscriptionKeeper


@dataclass
class Wired:
    store: Store
    dispatcher: Dispatcher
    listener_url: str


async def wire_event_path(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    clock: Clock,
    port: int,
    holder: RulesHolder | None = None,
) -> Wired:
    """Everything opened is closed by `stack`."""
    store = await stack.enter_async_context(Store.open(settings.daemon.database, clock=clock))
    clients = await open_clients(settings, list(settings.upstreams), clock=clock, stack=stack)
    dispatcher = build_dispatcher(settings, store, clients, clock=clock, holder=holder)
    deps = deps_from_settings(
        settings, inbox=store, clock=clock, on_events=dispatcher.wake, loaded_at=clock.now()
    )
    listener_url = await stack.enter_async_context(serve_app(make_app(deps), port=port))
    hooks = settings.webhooks.netsapiens
    assert hooks is not None
    keeper = SubscriptionKeeper.from_settings(
        clients["netsapiens"],  # type: ignore[arg-type]
        store,
        hooks,
        clock=clock,
    )
    await keeper.sync_once()
    return Wired(store, dispatcher, listener_url)
