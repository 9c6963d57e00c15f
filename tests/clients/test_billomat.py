"""BillomatClient against the Billomat simulator over loopback HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.clients.billomat import BillomatClient, parse_list
from daemon.clock import FakeClock
from daemon.errors import (
    AuthError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    ServerError,
    ValidationError,
)
from daemon.sandbox.billomat_sim import BillomatState, serve_billomat
from tests.clients.halo_billomat_fixtures import billomat_settings, run_cli, write_config

# 00:10:00 UTC: the current window started at 00:00 and the next starts at 00:15 (300 s away)
T0 = datetime(2025, 1, 1, 0, 10, tzinfo=UTC)
RESET = int(datetime(2025, 1, 1, 0, 15, tzinfo=UTC).timestamp())
WINDOW_START = RESET - 900


def client_for(url: str, clock: FakeClock | None = None, **overrides: Any) -> BillomatClient:
    return BillomatClient.from_settings(
        billomat_settings(url, **overrides), clock=clock or FakeClock(autojump=True)
    )


def clocked_state(clock: FakeClock, **kw: Any) -> BillomatState:
    return BillomatState(now=lambda: clock.now().timestamp(), **kw)


# -- list shapes and paging --------------------------------------------------------------------


async def test_list_quirks_single_object_absent_key_string_totals(billomat_sim: str) -> None:
    async with client_for(billomat_sim) as bm:
        many = await bm.clients.list(per_page=10)
        single = await bm.clients.list(id=5)
        none = await bm.clients.list(id=99999)
    assert (many.page, many.per_page, many.total, len(many.items)) == (1, 10, 60, 10)
    assert [i["id"] for i in single.items] == ["5"] and single.total == 1
    assert none.items == [] and none.total == 0


def test_parse_list_shapes() -> None:
    one = {"clients": {"@page": "1", "@per_page": "100", "@total": "1", "client": {"id": "1"}}}
    empty = {"clients": {"@page": "1", "@per_page": "100", "@total": "0"}}
    assert parse_list(one, "clients", 1, 100, "b").items == [{"id": "1"}]
    page = parse_list(empty, "clients", 1, 100, "b")
    assert page.items == [] and page.total == 0 and page.is_last
    hyphen = {"credit-notes": {"@total": "2", "credit-note": [{"id": "1"}, {"id": "2"}]}}
    assert len(parse_list(hyphen, "credit-notes", 1, 100, "b").items) == 2
    with pytest.raises(MalformedResponse):
        parse_list({"a": 1, "b": 2}, "clients", 1, 100, "b")


async def test_pagination_per_page_1000_concurrent_pages() -> None:
    state = BillomatState(demo_size=2500, handler_delay=0.05)
    async with serve_billomat(state) as url, client_for(url) as bm:
        pages = [p async for p in bm.clients.iter_pages()]
        sent = list(state.raw_queries)
        clamped = await bm.clients.list(per_page=5000)
    assert [(p.page, len(p.items)) for p in pages] == [(1, 1000), (2, 1000), (3, 500)]
    ids = [int(i["id"]) for p in pages for i in p.items]
    assert ids == list(range(1, 2501))
    assert clamped.per_page == 1000
    assert state.max_in_flight >= 2  # pages 2 and 3 were in flight together
    # pages 1-3, page 4 (past the prediction: did the list grow?), then the total re-read
    assert sent[0] == "page=1&per_page=1000" and sent[-1] == "page=1&per_page=1"
    assert sorted(sent[1:-1]) == [f"page={n}&per_page=1000" for n in (2, 3, 4)]


async def test_get_all_filters(billomat_sim: str) -> None:
    async with client_for(billomat_sim) as bm:
        contacts = await bm.contacts.get_all(client_id=3)
        items = await bm.resource("invoice_items").get_all(per_page=7)
    assert contacts and all(c["client_id"] == "3" for c in contacts)
    assert len(items) == 60


async def test_order_by_plus_is_sent_literally(
    billomat_state: BillomatState, billomat_sim: str
) -> None:
    async with client_for(billomat_sim) as bm:
        by_space = await bm.clients.list(order_by="name DESC", per_page=3)
        by_plus = await bm.clients.list(order_by="name+DESC", per_page=3)
    assert by_space.items == by_plus.items
    assert by_space.items[0]["name"] == "Kunde 9 GmbH"  # text sort, descending
    sent = [q for q in billomat_state.raw_queries if "order_by" in q]
    assert len(sent) == 2
    assert all("order_by=name+DESC" in q and "%2B" not in q for q in sent)


# -- headers and formats -----------------------------------------------------------------------


async def test_client_always_asks_for_json(
    billomat_state: BillomatState, billomat_sim: str
) -> None:
    async with client_for(billomat_sim) as bm:
        await bm.clients.list()
        await bm.clients.create({"name": "X"})
        await bm.clients.delete(1)
    assert billomat_state.accepts and all(a == "application/json" for a in billomat_state.accepts)
    # without the header the server answers XML, which the client could not parse
    async with (
        aiohttp.ClientSession() as raw,
        raw.get(f"{billomat_sim}/clients", headers={"X-BillomatApiKey": "demo-key"}) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("application/xml")
        assert (await resp.text()).startswith("<?xml")


async def test_app_headers_raise_the_quota(billomat_sim: str) -> None:
    opts = {"app_id": "demo-app", "app_secret": _secret("demo-app-secret")}
    async with client_for(billomat_sim, **opts) as bm:
        await bm.units.list()
        assert bm.rate.remaining == 999
    async with client_for(billomat_sim, app_id="demo-app", app_secret=_secret("no")) as bm:
        with pytest.raises(AuthError):
            await bm.units.list()


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


# -- rate limit --------------------------------------------------------------------------------


async def test_rate_headers_are_exposed(billomat_sim: str) -> None:
    async with client_for(billomat_sim) as bm:
        await bm.clients.list()
        await bm.clients.list()
    assert bm.rate.remaining == 298
    assert bm.rate.reset is not None and bm.rate.reset % 900 == 0


async def test_429_waits_until_reset_then_succeeds() -> None:
    clock = FakeClock(T0, autojump=True)
    state = clocked_state(clock, quota_unregistered=5)
    state.usage[(WINDOW_START, False)] = 5  # another tool spent the window
    async with serve_billomat(state) as url, client_for(url, clock) as bm:
        page = await bm.clients.list()
    assert page.total == 60
    assert state.rate_limited == 1
    assert clock.sleeps == [300.0]
    assert bm.rate.remaining == 4


async def test_spent_quota_pauses_before_sending() -> None:
    clock = FakeClock(T0, autojump=True)
    state = clocked_state(clock, quota_unregistered=3)
    async with serve_billomat(state) as url, client_for(url, clock) as bm:
        for _ in range(4):
            await bm.units.list()
    assert state.rate_limited == 0  # the fourth waited for the window instead of a 429
    assert clock.sleeps == [300.0]


async def test_wait_over_cap_raises_rate_limited() -> None:
    clock = FakeClock(T0, autojump=True)
    state = clocked_state(clock, quota_unregistered=1)
    state.usage[(WINDOW_START, False)] = 1
    async with serve_billomat(state) as url, client_for(url, clock, max_rate_wait=60) as bm:
        with pytest.raises(RateLimited) as info:
            await bm.clients.list()
        assert info.value.retry_after == pytest.approx(300)
        assert "Maximum number of requests (1 per 15 minutes)" in str(info.value)
        with pytest.raises(RateLimited, match="exceeds max_rate_wait"):
            await bm.clients.list()  # remaining 0 known: refused before sending
    assert clock.sleeps == []
    assert state.rate_limited == 1


# -- writes and errors -------------------------------------------------------------------------


async def test_crud_round_trip(billomat_state: BillomatState, billomat_sim: str) -> None:
    async with client_for(billomat_sim) as bm:
        created = await bm.clients.create({"name": "Neu GmbH", "country_code": "DE"})
        assert created["id"] == "61" and created["name"] == "Neu GmbH"
        assert (await bm.clients.get(61))["name"] == "Neu GmbH"
        updated = await bm.clients.update(61, {"name": "Neu AG"})
        assert updated["name"] == "Neu AG"
        assert await bm.clients.delete(61) is None  # 200 with an empty body
        with pytest.raises(NotFoundError):
            await bm.clients.get(61)
        credit = await bm.credit_notes.create({"client_id": 1})
        assert credit["id"] == "61"


async def test_invoice_actions(billomat_sim: str) -> None:
    async with client_for(billomat_sim) as bm:
        draft = await bm.invoices.create({"client_id": 2})
        assert draft["status"] == "DRAFT"
        await bm.invoices.complete(draft["id"])
        assert (await bm.invoices.get(draft["id"]))["status"] == "OPEN"
        pdf = await bm.invoices.pdf(draft["id"])
        assert pdf["mimetype"] == "application/pdf" and pdf["base64file"]
        await bm.invoices.email(draft["id"], {"recipients": {"to": "a@example.de"}})
        await bm.invoices.cancel(draft["id"])
        assert (await bm.invoices.get(draft["id"]))["status"] == "CANCELED"
        with pytest.raises(ValidationError, match="not a draft"):
            await bm.invoices.complete(draft["id"])


async def test_errors_are_typed_with_billomat_text(
    billomat_state: BillomatState, billomat_sim: str
) -> None:
    async with client_for(billomat_sim, max_retries=1) as bm:
        with pytest.raises(ValidationError) as info:
            await bm.invoices.create({"note": "no client"})
        assert "client_id is missing; Invoice has no items" in str(info.value)
        assert info.value.field_errors == {"": ["client_id is missing", "Invoice has no items"]}
        billomat_state.faults.update({"fail_next": 2, "fail_status": 500})
        with pytest.raises(ServerError):
            await bm.clients.list()
    async with client_for(billomat_sim, api_key=_secret("bad-key-value")) as bm:
        with pytest.raises(AuthError, match="Unauthorized") as auth:
            await bm.clients.list()
        assert "bad-key-value" not in str(auth.value)
    other_account = billomat_sim.replace("/demo/api", "/nosuch/api")
    async with client_for(other_account) as bm:
        with pytest.raises(NotFoundError):
            await bm.clients.list()


def test_resource_names() -> None:
    bm = BillomatClient.from_settings(billomat_settings("http://127.0.0.1:1"), clock=FakeClock())
    assert bm.resource("credit_notes") is bm.credit_notes is bm.resource("credit-notes")
    assert bm.delivery_notes.item_key == "delivery-note"
    with pytest.raises(KeyError):
        bm.resource("nope")
    with pytest.raises(AttributeError):
        _ = bm.nope


def test_default_base_url() -> None:
    cfg = billomat_settings("", billomat_id="acme")
    bm = BillomatClient.from_settings(cfg, clock=FakeClock())
    assert str(bm.session.base_url) == "https://acme.billomat.net/api/"


# -- CLI ---------------------------------------------------------------------------------------


async def test_cli_billomat_clients_list(billomat_sim: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"""
[daemon]
database = "{tmp_path / "state.db"}"

[upstreams.billomat]
billomat_id = "demo"
url = "{billomat_sim}"
api_key = "${{BILLOMAT_TEST_KEY}}"
""",
    )
    env = {"BILLOMAT_TEST_KEY": "demo-key"}
    code, out, err = await run_cli(
        "api", "billomat", "clients", "list", "per_page=2", "--config", str(config), env=env
    )
    assert code == 0, err
    page = json.loads(out)
    assert page["total"] == 60 and [c["id"] for c in page["items"]] == ["1", "2"]

    code, out, err = await run_cli(
        "api", "billomat", "clients", "get", "--id", "999", "--config", str(config), env=env
    )
    assert code == 1
    assert json.loads(err)["error"] == "NotFoundError"
