"""The inbound path end to end: the NetSapiens simulator posts to the real listener at the url
the real keeper subscribed, events land in the real Store, the gap filler adds what was missed
without duplicates, and a secret rotation moves the subscriptions without losing a delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clients.netsapiens import NetsapiensClient
from daemon.clock import FakeClock
from daemon.sandbox.netsapiens_sim import NetsapiensState
from daemon.store import Store
from daemon.webhooks.app import ListenerDeps, make_app
from daemon.webhooks.gapfill import Backfiller
from daemon.webhooks.keeper import SubscriptionKeeper
from daemon.webhooks.secrets import WebhookSecrets
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures
from tests.webhooks.listener_fixtures import OLD_SECRET, SECRET, serve_listener

pytestmark = pytest.mark.timeout(30)


class Listener:
    def __init__(self, store: Store, clock: FakeClock):
        self.woken: list[int] = []
        self.deps = ListenerDeps(
            inbox=store,
            secrets=WebhookSecrets(SECRET),
            clock=clock,
            on_events=self.woken.extend,
        )
        self.url = ""

    @property
    def public_url(self) -> str:
        return f"{self.url}/webhooks/netsapiens"


@pytest.fixture
async def real_listener(ns_store: Store, ns_clock: FakeClock) -> AsyncIterator[Listener]:
    listener = Listener(ns_store, ns_clock)
    async with serve_listener(make_app(listener.deps)) as url:
        listener.url = url
        yield listener


def keeper(
    client: NetsapiensClient,
    store: Store,
    clock: FakeClock,
    public_url: str,
    *,
    secret: str = SECRET,
    models: Sequence[str] = ("message", "cdr"),
    previous_secrets: Sequence[str] = (),
) -> SubscriptionKeeper:
    return SubscriptionKeeper(
        client,
        store,
        clock=clock,
        public_url=public_url,
        secret=secret,
        models=models,
        previous_secrets=previous_secrets,
    )


async def test_simulator_to_listener_to_inbox_and_backfill_overlap(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    real_listener: Listener,
) -> None:
    await keeper(ns_client, ns_store, ns_clock, real_listener.public_url).sync_once()
    msg = await ns_state.inbound_sms("15551230000", "15559870000", "balance?")
    assert [d.status for d in ns_state.deliveries] == [200]
    (row,) = await ns_store.list_events()
    assert row.dedupe_key == f"netsapiens:message:{msg['id']}"
    assert real_listener.woken == [row.id]
    # a redelivery of the same post is acknowledged and changes nothing
    await ns_state.emit("message", [msg])
    assert ns_state.deliveries[-1].status == 200
    assert real_listener.woken == [row.id] and len(await ns_store.list_events()) == 1
    # the gap filler reads the same message through the API: a duplicate, not a second event
    ns_clock.advance(60)
    report = await Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False).backfill(
        since=ns_clock.now() - timedelta(hours=1)
    )
    assert (report.inserted, report.duplicates) == (0, 1)


async def test_secret_rotation_loses_no_delivery(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    tmp_path: Path,
) -> None:
    # The listener runs under OLD_SECRET and the keeper has subscribed with it.
    old = Listener(ns_store, ns_clock)
    old.deps = replace(old.deps, secrets=WebhookSecrets(OLD_SECRET))
    async with serve_listener(make_app(old.deps)) as url:
        old.url = url
        await keeper(
            ns_client, ns_store, ns_clock, old.public_url, secret=OLD_SECRET, models=["message"]
        ).sync_once()
        await ns_state.inbound_sms("15551230000", "15559870000", "one")
    # Restart with SECRET, OLD_SECRET accepted for an hour: the old subscription still delivers.
    rotated = Listener(ns_store, ns_clock)
    rotated.deps = replace(
        rotated.deps,
        secrets=WebhookSecrets.rotating(
            SECRET, OLD_SECRET, loaded_at=ns_clock.now(), grace=timedelta(hours=1)
        ),
    )
    async with serve_listener(make_app(rotated.deps)) as url:
        rotated.url = url
        # the new process listens on a new port: point the old subscription at it, as a
        # restart on the same address would
        for sub in ns_state.subscriptions.values():
            sub["post-url"] = sub["post-url"].replace(old.url, url)
        await ns_state.inbound_sms("15551230000", "15559870000", "two")
        assert ns_state.deliveries[-1].status == 200  # old secret, inside the grace
        report = await keeper(
            ns_client,
            ns_store,
            ns_clock,
            rotated.public_url,
            models=["message"],
            previous_secrets=[OLD_SECRET],
        ).sync_once()
        assert len(report.replaced) == 1 and len(report.deleted) == 1
        await ns_state.inbound_sms("15551230000", "15559870000", "three")
        assert ns_state.deliveries[-1].status == 200
        assert ns_state.deliveries[-1].url.endswith("/" + SECRET)
        ns_clock.advance(3600)
        # after the grace a straggler with the old secret is refused like any stranger
        sub = ns_state.live_subscriptions("message")[0]
        stale_url = sub["post-url"].replace(SECRET, OLD_SECRET)
        sub["post-url"] = stale_url
        await ns_state.inbound_sms("15551230000", "15559870000", "four")
        assert ns_state.deliveries[-1].status == 404
    texts = sorted(e.payload for e in await ns_store.list_events() if '"body":"' in e.payload)
    assert len(texts) == 3
    assert all(SECRET not in t and OLD_SECRET not in t for t in texts)
