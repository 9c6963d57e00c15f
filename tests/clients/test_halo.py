"""HaloClient against the Halo simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.clients.halo import HaloClient
from daemon.clients.halo_resources import (
    RESOURCES,
    HaloResource,
    as_records,
    find_spec,
    parse_list,
)
from daemon.clients.ratelimit import RateLimit
from daemon.clock import FakeClock
from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    ServerError,
    ValidationError,
)
from daemon.sandbox.halo_sim import CLOSED_STATUS, HaloState, serve_halo
from tests.clients.halo_billomat_fixtures import halo_settings, run_cli, write_config


def client_for(url: str, clock: FakeClock | None = None, **overrides: Any) -> HaloClient:
    return HaloClient.from_settings(
        halo_settings(url, **overrides), clock=clock or FakeClock(autojump=True)
    )


# -- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["", "acme"])
async def test_token_request_sends_tenant_only_when_configured(
    halo_state: HaloState, halo_sim: str, tenant: str | None
) -> None:
    async with client_for(halo_sim, tenant=tenant) as halo:
        await halo.statuses.list()
    expected = {"tenant": "acme"} if tenant else {}
    assert halo_state.token_queries == [expected]


async def test_hosted_tenant_required() -> None:
    state = HaloState(demo_size=5, tenant="acme", require_tenant=True)
    async with serve_halo(state) as url:
        async with client_for(url, tenant="acme") as halo:
            assert (await halo.tickets.list()).record_count == 5
        async with client_for(url) as halo:
            with pytest.raises(AuthError, match="invalid_request"):
                await halo.tickets.list()


async def test_bad_client_is_auth_error_with_oauth_description(halo_sim: str) -> None:
    async with client_for(halo_sim, client_secret="wrong-secret-value") as halo:
        with pytest.raises(AuthError) as info:
            await halo.tickets.list()
    assert "invalid_client" in str(info.value)
    assert "Invalid client credentials" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


async def test_token_expiry_mid_pagination_one_refresh_no_lost_page(
    halo_state: HaloState, halo_sim: str
) -> None:
    seen: list[int] = []
    async with client_for(halo_sim, max_concurrency=3) as halo:
        async for page in halo.tickets.iter_pages(page_size=20):
            seen.extend(r["id"] for r in page.records)
            if page.page_no == 1:
                halo_state.expire_tokens()  # the server forgets the token mid-walk
    assert seen == list(range(1, 121))
    assert halo_state.stats.token_requests == 2  # the first token and exactly one refresh
    assert halo_state.unauthorized >= 1


async def test_token_refreshed_before_expiry_without_a_401() -> None:
    clock = FakeClock(autojump=True)
    state = HaloState(demo_size=3, token_ttl=120, now=clock.monotonic)
    async with serve_halo(state) as url, client_for(url, clock) as halo:
        await halo.tickets.list()
        clock.advance(70)  # inside the 60 s leeway of the 120 s token
        await halo.tickets.list()
    assert state.stats.token_requests == 2
    assert state.unauthorized == 0


@pytest.mark.parametrize("how", ["client_clock", "server_side"])
async def test_200_concurrent_calls_with_expired_token_one_token_request(how: str) -> None:
    clock = FakeClock(autojump=True)
    state = HaloState(demo_size=3, token_ttl=600, now=clock.monotonic)
    async with serve_halo(state) as url, client_for(url, clock, max_concurrency=20) as halo:
        await halo.tickets.list()
        if how == "client_clock":
            clock.advance(601)
        else:
            state.expire_tokens()
        results = await asyncio.gather(*(halo.tickets.get(1) for _ in range(200)))
    assert all(r["id"] == 1 for r in results)
    assert state.stats.token_requests == 2


async def test_revoked_credentials_fail_fast_and_log_once(
    halo_state: HaloState, halo_sim: str
) -> None:
    async with client_for(halo_sim) as halo:
        await halo.tickets.list()
        halo_state.revoked = True
        with capture_logs() as logs:
            results = await asyncio.gather(
                *(halo.tickets.get(1) for _ in range(30)), return_exceptions=True
            )
            with pytest.raises(AuthError):
                await halo.tickets.get(1)  # within the failure backoff: no token request
    assert all(isinstance(r, AuthError) for r in results)
    assert halo_state.stats.token_requests == 2  # initial + one refused refresh, no storm
    failed = [e for e in logs if e["event"] == "auth.failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert failed[0]["upstream"] == "halo"
    assert "invalid_client" in failed[0]["error"]
    assert halo.auth is not None and not halo.auth.healthy


# -- lists and paging --------------------------------------------------------------------------


async def test_list_all_concurrent_pages_in_order(halo_state: HaloState, halo_sim: str) -> None:
    async with client_for(halo_sim) as halo:
        page = await halo.tickets.list(page_size=50)
        records = [r async for r in halo.tickets.list_all(page_size=50)]
    assert page.record_count == 120 and len(page.records) == 50
    assert [r["id"] for r in records] == list(range(1, 121))
    # one list() + three pages + the page past the prediction + the total re-read at the end
    assert halo_state.stats.requests["/api/Tickets"] == 6


@pytest.mark.parametrize("echo", [True, False])
async def test_page_size_is_learned_from_the_server(echo: bool) -> None:
    state = HaloState(demo_size=120, max_page_size=30)
    async with serve_halo(state) as url, client_for(url) as halo:
        if not echo:  # a server that caps silently: the short first page tells the size
            original = halo.request

            async def no_echo(*a: Any, **kw: Any) -> Any:
                body = await original(*a, **kw)
                if isinstance(body, dict):
                    body.pop("page_size", None)
                return body

            halo.request = no_echo  # type: ignore[method-assign]
        ids = [r["id"] async for r in halo.tickets.list_all(page_size=100)]
    assert ids == list(range(1, 121))
    assert state.stats.requests["/api/Tickets"] == 6  # 4 pages, 1 past the end, 1 recount


async def test_filters_are_sent(halo_sim: str) -> None:
    async with client_for(halo_sim) as halo:
        open_tickets = [r async for r in halo.tickets.list_all(open_only=True, client_id=3)]
        found = await halo.tickets.list(search="ticket 7:")
    assert open_tickets
    assert all(r["status_id"] != CLOSED_STATUS and r["client_id"] == 3 for r in open_tickets)
    assert [r["id"] for r in found.records] == [7]


async def test_bare_array_list(halo_state: HaloState, halo_sim: str) -> None:
    async with client_for(halo_sim) as halo:
        page = await halo.statuses.list()
        teams = [r async for r in halo.teams.list_all()]
        agents = [r async for r in halo.agents.list_all(page_size=5)]  # paged bare array
        me = await halo.agents.me()
    assert page.record_count is None and len(page.records) == 12
    assert len(teams) == 12
    assert [a["id"] for a in agents] == list(range(1, 13))
    assert halo_state.stats.requests["/api/Agent"] == 3
    assert me["is_api_agent"] is True


async def test_endpoint_ignoring_paging_is_detected(halo_state: HaloState, halo_sim: str) -> None:
    """An endpoint that answers page 1 for every page_no (CRMNote) fails the walk: reading page
    1 alone as the whole list would let a sync tombstone everything past it."""
    async with client_for(halo_sim, max_concurrency=2) as halo:
        notes: list[Any] = []
        with pytest.raises(MalformedResponse, match="repeats page 1"):
            async for r in halo.crm_notes.list_all(page_size=50):
                notes.append(r)
    assert [n["id"] for n in notes] == list(range(1, 51))  # page 1 was read, then the stop
    assert halo_state.stats.requests["/api/CRMNote"] <= 4  # page 1 + at most the window


class StubRequester:
    """A Requester answering the same bare array for every page, as some endpoints do."""

    name = "halo"
    page_concurrency = 2

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.calls = 0

    async def request(self, method: str, path: str, params: Any = None, json: Any = None) -> Any:
        self.calls += 1
        return list(self.records)


async def test_bare_array_sent_at_once_is_read_once() -> None:
    stub = StubRequester([{"id": i} for i in range(1, 13)])
    res = HaloResource(stub, RESOURCES["statuses"])
    records = [r async for r in res.list_all(page_size=5)]
    assert [r["id"] for r in records] == list(range(1, 13))
    assert stub.calls == 1  # more than asked for: the server sent everything at once


async def test_bare_array_repeating_a_full_page_fails() -> None:
    stub = StubRequester([{"id": i} for i in range(1, 6)])
    res = HaloResource(stub, RESOURCES["statuses"])
    with pytest.raises(MalformedResponse, match="ignores paging"):
        [r async for r in res.list_all(page_size=5)]
    assert stub.calls == 2


def test_parse_list_envelopes() -> None:
    assert parse_list([{"id": 1}], None) == ([{"id": 1}], None)
    assert parse_list({"record_count": "3", "tickets": [{"id": 1}]}, "tickets") == (
        [{"id": 1}],
        3,
    )
    assert parse_list({"things": [{"id": 2}], "record_count": 1}, "wrong") == ([{"id": 2}], 1)
    for bad in (
        {"things": [{"id": 2}], "page_no": 1},  # a guessed key and nothing vouching for it
        {"error": "invalid filter"},
        {},
        None,
        {"tickets": None},
        {"tickets": [1, 2]},
        {"tickets": [], "record_count": "many"},
    ):
        with pytest.raises(MalformedResponse):
            parse_list(bad, "tickets")
    assert as_records({"id": 1}) == [{"id": 1}]
    assert as_records([{"id": 1}, {"id": 2}]) == [{"id": 1}, {"id": 2}]
    assert as_records(None) == []


def test_resource_lookup() -> None:
    assert find_spec("kb articles").path == "KBArticle"
    assert find_spec("kb-articles").name == "kb_articles"
    assert find_spec("CRMNote").name == "crm_notes"
    assert find_spec("Client").name == "clients"
    with pytest.raises(KeyError):
        find_spec("nope")
    client = HaloClient.from_settings(halo_settings("http://127.0.0.1:1"), clock=FakeClock())
    assert all(client.resource(name).spec.name == name for name in RESOURCES)


# -- rate limits -------------------------------------------------------------------------------


async def test_rate_budget_waits_instead_of_429() -> None:
    clock = FakeClock(autojump=True)
    state = HaloState(demo_size=120, now=clock.monotonic, rate_limit=(10, 60.0))
    budget = RateLimit(10, 60.0)
    # one page in flight: with autojump, a concurrent task's budget sleep can move the shared
    # fake clock between another task's budget grant and its arrival at the simulator
    opts = {"rate_limit": budget, "max_concurrency": 1}
    async with serve_halo(state) as url, client_for(url, clock, **opts) as halo:
        records = [r async for r in halo.tickets.list_all(page_size=5)]  # 24 pages
        assert halo.session.budget is not None and halo.session.budget.waited >= 120
    assert len(records) == 120
    assert state.rate_limited == 0
    assert sum(clock.sleeps) >= 120


async def test_rolling_window_429_without_budget() -> None:
    clock = FakeClock(autojump=True)
    state = HaloState(demo_size=10, now=clock.monotonic, rate_limit=(2, 300.0))
    async with serve_halo(state) as url, client_for(url, clock, max_retries=0) as halo:
        await halo.tickets.get(1)
        await halo.tickets.get(2)
        with pytest.raises(
            RateLimited, match="Rate Limit Reached - 2 Requests per rolling 5 minute window"
        ):
            await halo.tickets.get(3)


async def test_429_retry_after_honoured(halo_state: HaloState, halo_sim: str) -> None:
    clock = FakeClock(autojump=True)
    halo_state.faults.update({"rate_limit_next": 1, "retry_after": "7", "path_filter": "/api/"})
    async with client_for(halo_sim, clock) as halo:
        ticket = await halo.tickets.get(5)
    assert ticket["id"] == 5
    assert 7.0 in clock.sleeps


# -- writes and errors -------------------------------------------------------------------------


async def test_array_body_writes_and_object_or_list_answers(
    halo_state: HaloState, halo_sim: str
) -> None:
    async with client_for(halo_sim) as halo:
        one = await halo.tickets.create({"summary": "Phone down", "tickettype_id": 1})
        two = await halo.tickets.batch_create([{"summary": "A"}, {"summary": "B"}])
        updated = await halo.tickets.update({"id": one["id"], "summary": "Phone up"})
    assert one["id"] == 121 and [t["id"] for t in two] == [122, 123]
    assert updated == {**one, "summary": "Phone up"}
    assert halo_state.writes == [
        [{"summary": "Phone down", "tickettype_id": 1}],
        [{"summary": "A"}, {"summary": "B"}],
        [{"id": 121, "summary": "Phone up"}],
    ]
    with pytest.raises(ValueError, match="needs an 'id'"):
        await halo.tickets.update({"summary": "no id"})


async def test_crud_round_trip(halo_sim: str) -> None:
    async with client_for(halo_sim) as halo:
        created = await halo.clients.create({"name": "Acme Ltd"})
        assert (await halo.clients.get(created["id"]))["name"] == "Acme Ltd"
        await halo.clients.update({"id": created["id"], "name": "Acme plc"})
        assert (await halo.clients.get(created["id"], includedetails=True))["name"] == "Acme plc"
        await halo.clients.delete(created["id"])
        with pytest.raises(NotFoundError):
            await halo.clients.get(created["id"])
        raw = await halo.request("GET", "/Tickets", params={"pageinate": "true", "page_size": 2})
    assert raw["record_count"] == 120 and len(raw["tickets"]) == 2


async def test_errors_are_typed(halo_state: HaloState, halo_sim: str) -> None:
    async with client_for(halo_sim, max_retries=1) as halo:
        with pytest.raises(ValidationError, match="Please enter a Summary"):
            await halo.tickets.create({"details": "no summary"})
        with pytest.raises(ValidationError, match="JSON array"):
            await halo.request("POST", "Tickets", json={"summary": "not an array"})
        halo_state.faults.update({"fail_next": 1, "fail_status": 403, "path_filter": "/api/"})
        with pytest.raises(ForbiddenError):
            await halo.tickets.get(1)
        halo_state.faults.update({"fail_next": 5, "fail_status": 500})
        with pytest.raises(ServerError):
            await halo.tickets.get(1)
        # aiohttp silently resends once on a dropped keep-alive, so drop more than attempts
        halo_state.faults.update({"fail_next": 0, "drop_next": 10})
        with pytest.raises(ConnectionError):
            await halo.tickets.get(1)
        halo_state.faults.update({"drop_next": 0})
        assert (await halo.tickets.get(1))["id"] == 1


# -- CLI ---------------------------------------------------------------------------------------


async def test_cli_halo_tickets_list(halo_sim: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"""
[daemon]
database = "{tmp_path / "state.db"}"

[upstreams.halo]
tenant_url = "{halo_sim}"
client_id = "halo-client"
client_secret = "${{HALO_TEST_SECRET}}"
scope = "all"
""",
    )
    env = {"HALO_TEST_SECRET": "halo-secret"}
    code, out, err = await run_cli(
        "api", "halo", "tickets", "list", "page_size=3", "--config", str(config), env=env
    )
    assert code == 0, err
    page = json.loads(out)
    assert page["record_count"] == 120 and [r["id"] for r in page["records"]] == [1, 2, 3]

    code, out, err = await run_cli(
        "api", "halo", "request", "GET", "/Tickets/4", "--config", str(config), env=env
    )
    assert code == 0, err
    assert json.loads(out)["id"] == 4

    code, out, err = await run_cli(
        "api", "halo", "tickets", "get", "--id", "999", "--config", str(config), env=env
    )
    assert code == 1
    assert json.loads(err)["error"] == "NotFoundError"
