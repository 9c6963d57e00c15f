"""Backfill: events missed while the listener was down reach the inbox once; overlap with live
webhook deliveries produces no duplicates (same dedupe keys on both paths)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from daemon.clients.netsapiens import NetsapiensClient
from daemon.clock import FakeClock
from daemon.sandbox.netsapiens_sim import NetsapiensState
from daemon.sandbox.server import serve_app
from daemon.store import NewEvent, Store
from daemon.sync.backfill import JOB, Backfiller, should_backfill
from daemon.sync.subscriptions import SubscriptionKeeper
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures
from tests.netsapiens_fixtures import SECRET, T0, WebhookListener

pytestmark = pytest.mark.timeout(30)


def make_keeper(
    client: NetsapiensClient, store: Store, clock: FakeClock, public_url: str
) -> SubscriptionKeeper:
    return SubscriptionKeeper(
        client, store, clock=clock, public_url=public_url, secret=SECRET, models=["message", "cdr"]
    )


async def test_events_missed_while_listener_down_are_backfilled_once(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    hook = WebhookListener(ns_store, ns_clock)
    async with serve_app(hook.app()) as url:
        hook.url = url
        await make_keeper(ns_client, ns_store, ns_clock, hook.public_url).sync_once()
        live = await ns_state.inbound_sms("15551230000", "15559870000", "before the outage")
    # the listener is down now: deliveries fail and the PBX never retries them
    ns_clock.advance(600)
    missed = [
        await ns_state.inbound_sms("15551230000", "15559870000", "balance?"),
        await ns_state.inbound_sms("15557770000", "15559870000", "hello"),
    ]
    ns_state.add_cdr("15557770000", "15559870000", duration=0, start=ns_clock.now())
    assert [d.status for d in ns_state.deliveries] == [200, None, None]
    assert ns_state.live_subscriptions("message")[0]["error-count"] == 2

    ns_clock.advance(60)
    backfiller = Backfiller(ns_client, ns_store, clock=ns_clock, default_region="US")
    since = await backfiller.default_since()
    assert since == T0 - timedelta(minutes=10)  # last arrival minus the overlap margin
    report = await backfiller.backfill()
    assert (report.fetched, report.inserted, report.duplicates) == (4, 3, 1)
    keys = {r.dedupe_key for r in await ns_store.list_events()}
    assert keys == {f"netsapiens:message:{m['id']}" for m in [live, *missed]} | {
        "netsapiens:cdr:{call-orig-call-id}+{call-term-call-id}".format_map(ns_state.cdrs[0])
    }
    kinds = sorted(r.kind for r in await ns_store.list_events())
    assert kinds == ["call.missed", "message.received", "message.received", "message.received"]

    again = await backfiller.backfill(since=T0 - timedelta(hours=1))
    assert (again.inserted, again.duplicates) == (0, 4)
    assert len(await ns_store.list_events()) == 4
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.last_success_at == ns_clock.now()


async def test_overlap_with_live_delivery_causes_no_duplicate(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    listener: WebhookListener,
) -> None:
    await make_keeper(ns_client, ns_store, ns_clock, listener.public_url).sync_once()
    msg = await ns_state.inbound_sms("15551230000", "15559870000", "balance?")
    assert listener.deliveries == 1
    webhook_row = (await ns_store.list_events())[0]
    report = await Backfiller(ns_client, ns_store, clock=ns_clock).backfill(
        since=T0 - timedelta(minutes=5)
    )
    assert (report.inserted, report.duplicates) == (0, 1)
    rows = await ns_store.list_events()
    assert [r.id for r in rows] == [webhook_row.id]
    assert rows[0].dedupe_key == f"netsapiens:message:{msg['id']}"


async def test_backfill_skips_messages_before_since(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    ns_state.record_inbound_sms("15551230000", "15559870000", "old")
    ns_clock.advance(3600)
    ns_state.record_inbound_sms("15551230000", "15559870000", "new")
    report = await Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False).backfill(
        since=ns_clock.now() - timedelta(minutes=1)
    )
    assert (report.fetched, report.inserted) == (1, 1)


async def test_default_since_without_history_and_from_cursor(
    ns_client: NetsapiensClient, ns_store: Store, ns_clock: FakeClock
) -> None:
    b = Backfiller(ns_client, ns_store, clock=ns_clock, first_lookback=timedelta(hours=6))
    assert await b.default_since() == T0 - timedelta(hours=6)
    await ns_store.set_sync_state(JOB, cursor=(T0 - timedelta(hours=1)).isoformat())
    assert await b.default_since() == T0 - timedelta(hours=1, minutes=10)
    await ns_store.insert_events(
        [NewEvent("netsapiens", "message.received", "k", "{}", T0 - timedelta(days=30))]
    )
    assert await b.default_since() == T0 - timedelta(days=7)  # capped at max_lookback


@pytest.mark.parametrize(
    ("last_minutes_ago", "expected"), [(None, True), (5, False), (59, False), (60, True)]
)
def test_should_backfill(last_minutes_ago: int | None, expected: bool) -> None:
    last = None if last_minutes_ago is None else T0 - timedelta(minutes=last_minutes_ago)
    assert should_backfill(T0, last, timedelta(hours=1)) is expected


async def test_sim_inbound_sms_over_http(
    ns_sim: str,
    ns_state: NetsapiensState,
    listener: WebhookListener,
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_clock: FakeClock,
) -> None:
    import aiohttp

    from daemon.sandbox.netsapiens_sim import SIM_INBOUND_PATH

    await make_keeper(ns_client, ns_store, ns_clock, listener.public_url).sync_once()
    async with aiohttp.ClientSession() as http:
        body = {"from": "15551230000", "to": "15559870000", "text": "balance?"}
        async with http.post(ns_sim + SIM_INBOUND_PATH, json=body) as resp:
            assert resp.status == 200
            answer = await resp.json()
        async with http.post(ns_sim + SIM_INBOUND_PATH, json={"from": "x"}) as resp:
            assert resp.status == 400
    assert answer["deliveries"] == [200]
    rows = await ns_store.list_events()
    assert [r.dedupe_key for r in rows] == [f"netsapiens:message:{answer['message']['id']}"]
