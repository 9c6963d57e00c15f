"""BlestaClient against the Blesta simulator over loopback."""

from __future__ import annotations

import random
from typing import Any

import pytest

from daemon.clients.blesta import BlestaClient, encode_php_params, parse_csv
from daemon.clients.blesta_report import months, to_dataframe
from daemon.clients.paging import WalkReport
from daemon.clock import FakeClock
from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    UpstreamResponseError,
    ValidationError,
)
from daemon.sandbox.blesta_php import parse_php_params
from daemon.sandbox.blesta_sim import BlestaState
from tests.clients.blesta_fixtures import (
    BLESTA_KEY,
    BLESTA_USER,
    blesta_settings,
    fast_options,
)

# -- encoding -------------------------------------------------------------------------------------


def test_encode_php_params_nesting_lists_and_scalars() -> None:
    args = {
        "status": "active",
        "page": 2,
        "vars": {"lines": [{"amount": 5, "desc": "a b"}, {"amount": 2.5}], "tax": True},
        "filters": {"client_group_id": 1, "skip": None},
        "paid": False,
        "none": None,
        "empty": [],
    }
    assert encode_php_params(args) == [
        ("status", "active"),
        ("page", "2"),
        ("vars[lines][0][amount]", "5"),
        ("vars[lines][0][desc]", "a b"),
        ("vars[lines][1][amount]", "2.5"),
        ("vars[tax]", "1"),
        ("filters[client_group_id]", "1"),
        ("paid", "0"),
    ]
    assert encode_php_params(None) == []


def test_encode_round_trips_through_php_parsing() -> None:
    args = {"vars": {"a": {"b": ["x", "y"]}, "c": "1"}, "order_by": {"date_added": "DESC"}}
    parsed = parse_php_params(encode_php_params(args))
    assert parsed == {
        "vars": {"a": {"b": {"0": "x", "1": "y"}}, "c": "1"},
        "order_by": {"date_added": "DESC"},
    }


async def test_get_sends_query_and_post_sends_form(
    blesta: BlestaClient, blesta_state: BlestaState
) -> None:
    await blesta.get("clients", "getList", {"status": "active", "order_by": {"id": "DESC"}})
    verb, model, method, args = blesta_state.calls[-1]
    assert (verb, model, method) == ("GET", "clients", "getList")
    assert args == {"status": "active", "order_by": {"id": "DESC"}}
    new_id = (
        await blesta.post(
            "clients", "add", {"vars": {"first_name": "Ann", "last_name": "Lee", "email": "a@x.io"}}
        )
    ).data
    verb, _, _, args = blesta_state.calls[-1]
    assert verb == "POST" and args["vars"]["first_name"] == "Ann"
    assert blesta_state.clients[-1]["id"] == new_id


# -- every method -----------------------------------------------------------------------------


async def test_clients_crud(blesta: BlestaClient, blesta_state: BlestaState) -> None:
    got = await blesta.get("clients", "get", {"client_id": 3})
    assert got.data["id"] == "3" and got.is_json and not got.is_csv
    assert isinstance(got.data["id"], str)  # values as strings, like PHP
    assert (await blesta.get("clients", "get", {"client_id": 9999})).data is False
    new_id = (
        await blesta.post(
            "clients", "add", {"vars": {"first_name": "A", "last_name": "B", "email": "a@b.co"}}
        )
    ).data
    edited = await blesta.put("clients", "edit", {"client_id": new_id, "vars": {"company": "Z"}})
    assert edited.data["company"] == "Z"
    assert (await blesta.delete("clients", "delete", {"client_id": new_id})).data is None
    assert (await blesta.get("clients", "get", {"client_id": new_id})).data is False
    assert blesta_state.calls[-2][0] == "DELETE"


async def test_add_validation_errors(blesta: BlestaClient) -> None:
    with pytest.raises(ValidationError) as info:
        await blesta.post("clients", "add", {"vars": {"first_name": "", "email": "nope"}})
    err = info.value
    assert err.status == 400
    assert err.field_errors == {
        "first_name": ["Please enter a first name."],
        "last_name": ["Please enter a last name."],
        "email": ["Please enter a valid email address."],
    }
    assert "bad syntax" in str(err)


async def test_json_body_is_ignored_like_real_blesta(
    blesta: BlestaClient, blesta_state: BlestaState
) -> None:
    resp = await blesta.session.request(
        "POST", "clients/add.json", json_body={"vars": {"first_name": "A"}}, raise_for_status=False
    )
    assert resp.status == 400  # the server saw no arguments at all
    assert blesta_state.calls[-1][3] == {}


async def test_lists_and_default_narrowing(blesta: BlestaClient, blesta_state: BlestaState) -> None:
    assert await blesta.count("clients") == len(blesta_state.clients)
    active = await blesta.get_all("clients", args={"status": "active"})
    assert {r["status"] for r in active} == {"active"}
    all_invoices = await blesta.get_all("invoices", args={"status": "all"})
    open_invoices = await blesta.get_all("invoices")
    assert len(all_invoices) == len(blesta_state.invoices) > len(open_invoices) > 0
    assert len(await blesta.get_all("services")) < len(
        await blesta.get_all("services", args={"status": "all"})
    )
    assert {t["status"] for t in await blesta.get_all("transactions")} == {"approved"}
    assert len(await blesta.get_all("packages")) == 5
    contacts = await blesta.get_all("contacts", args={"client_id": 4})
    assert len(contacts) == 2  # every 4th client has a billing contact
    numbers = (await blesta.get("contacts", "getNumbers", {"contact_id": contacts[0]["id"]})).data
    assert numbers and numbers[0]["number"] == blesta_state.clients[3]["phone"]


async def test_missing_required_argument_is_server_error_with_message(
    blesta: BlestaClient, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    with pytest.raises(ServerError) as info:
        await blesta.get("contacts", "getList")
    assert "Failed to retrieve the default value" in str(info.value)
    assert info.value.status == 500


async def test_unknown_model_and_not_callable(blesta: BlestaClient) -> None:
    with pytest.raises(NotFoundError):
        await blesta.get("nosuch", "getList")
    with pytest.raises(NotFoundError):
        await blesta.get("clients", "nosuchMethod")
    with pytest.raises(ForbiddenError):
        await blesta.get("clients", "validateCustomFields")


async def test_unsupported_format_is_415(blesta: BlestaClient) -> None:
    # json, xml and php are Blesta's formats (blesta-core api.php); anything else is a 415
    with pytest.raises(UpstreamResponseError) as info:
        await blesta.session.request("GET", "clients/getList.yaml")
    assert info.value.status == 415


async def test_maintenance_503_is_retried(
    blesta: BlestaClient, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.maintenance = True
    with pytest.raises(ServerError) as info:
        await blesta.get("clients", "getList")
    assert "maintenance" in str(info.value)
    assert len(fake_clock.sleeps) == 3


async def test_200_with_errors_is_validation_error(blesta_state: BlestaState) -> None:
    from aiohttp import web

    from daemon.sandbox.server import serve_app

    async def odd(request: web.Request) -> web.Response:
        return web.json_response({"response": None, "errors": {"email": {"exists": "Taken."}}})

    app = web.Application()
    app.router.add_post("/api/clients/add.json", odd)
    async with serve_app(app) as url:
        client = BlestaClient.create(url + "/api", "u", "k", clock=FakeClock(autojump=True))
        async with client:
            with pytest.raises(ValidationError) as info:
                await client.post("clients", "add", {"vars": {"email": "x@y.z"}})
    assert info.value.field_errors == {"email": ["Taken."]}


async def test_html_200_is_malformed_not_a_crash() -> None:
    from aiohttp import web

    from daemon.sandbox.server import serve_app

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/clients/getList.json", html)
    async with serve_app(app) as url:
        client = BlestaClient.create(url + "/api", "u", "k", clock=FakeClock(autojump=True))
        async with client:
            with pytest.raises(MalformedResponse) as info:
                await client.get("clients", "getList")
    assert "login" in info.value.excerpt


# -- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["basic", "header"])
async def test_both_auth_forms(blesta_sim: str, mode: str) -> None:
    client = BlestaClient.from_settings(
        blesta_settings(blesta_sim, auth=mode), clock=FakeClock(autojump=True)
    )
    async with client:
        assert await client.count("clients") == 41


@pytest.mark.parametrize("mode", ["basic", "header"])
async def test_bad_key_is_auth_error_without_the_key(
    blesta_sim: str, blesta_state: BlestaState, mode: str
) -> None:
    client = BlestaClient.create(
        blesta_sim, BLESTA_USER, "wrong-key-1234", clock=FakeClock(autojump=True), auth=mode
    )
    async with client:
        with pytest.raises(AuthError) as info:
            await client.get("clients", "getList")
    assert "wrong-key-1234" not in str(info.value.as_dict())
    assert blesta_state.stats.requests["/api/clients/getList.json"] == 1


def test_from_settings_builds_options(blesta_sim: str) -> None:
    cfg = blesta_settings(
        blesta_sim, timeout=12.0, max_retries=2, max_concurrency=3, rate_limit="600/5m",
        max_response_bytes="2MB", max_retry_wait="90s",
    )  # fmt: skip
    client = BlestaClient.from_settings(cfg, clock=FakeClock())
    opts = client.session.options
    assert (opts.timeout, opts.max_retries, opts.max_concurrency) == (12.0, 2, 3)
    assert opts.rate_limit is not None and opts.rate_limit.count == 600
    assert (opts.max_response_bytes, opts.max_retry_wait) == (cfg.max_response_bytes, 90.0)
    assert BLESTA_KEY in client.session.secrets
    with pytest.raises(ValueError):
        BlestaClient.create("http://x", "u", "k", clock=FakeClock(), auth="oauth")


# -- pagination -----------------------------------------------------------------------------------


async def _client_for(url: str) -> BlestaClient:
    client = BlestaClient.create(
        url, BLESTA_USER, BLESTA_KEY, clock=FakeClock(autojump=True), options=fast_options()
    )
    client.session._rng = random.Random(3)
    return client


@pytest.mark.parametrize(
    ("n", "pages"), [(0, 0), (1, 1), (20, 1), (21, 2), (25, 2), (26, 2), (40, 2), (41, 3)]
)
async def test_pagination_edges(
    blesta_sim: str, blesta_state: BlestaState, n: int, pages: int
) -> None:
    del blesta_state.clients[n:]
    client = await _client_for(blesta_sim)
    report = WalkReport()
    async with client:
        got = [(p, len(rows)) async for p, rows in client.iter_pages("clients", report=report)]
        assert len(got) == pages
        ids = [r["id"] for r in await client.get_all("clients")]
    assert ids == [c["id"] for c in blesta_state.clients]
    assert len(ids) == len(set(ids)) == n
    assert report.complete and report.total_start == report.total_end == n
    if n > 20:
        assert report.page_size == 20  # learned, not assumed


async def test_page_size_is_learned_not_assumed(blesta_sim: str, blesta_state: BlestaState) -> None:
    blesta_state.page_size = 7
    client = await _client_for(blesta_sim)
    report = WalkReport()
    async with client:
        rows = [r async for _, page in client.iter_pages("clients", report=report) for r in page]
    assert len(rows) == 41 and report.page_size == 7
    pages = [a["page"] for v, m, meth, a in blesta_state.calls if meth == "getList"]
    # 41 = 5 full pages of 7 + 6; page 7 is the one past the prediction that detects growth
    assert sorted(pages, key=int) == [str(p) for p in range(1, 8)]


async def test_count_fallback_pages_sequentially(
    blesta_sim: str, blesta_state: BlestaState
) -> None:
    blesta_state.disabled.add("clients/getListCount")
    client = await _client_for(blesta_sim)
    async with client:
        rows = await client.get_all("clients")
    assert len(rows) == 41
    pages = [a["page"] for v, m, meth, a in blesta_state.calls if meth == "getList"]
    assert pages == ["1", "2", "3"]  # ended on the short page


async def test_count_fallback_exact_multiple_ends_on_empty_page(
    blesta_sim: str, blesta_state: BlestaState
) -> None:
    del blesta_state.clients[40:]
    blesta_state.disabled.add("clients/getListCount")
    client = await _client_for(blesta_sim)
    async with client:
        assert len(await client.get_all("clients")) == 40


async def test_failed_page_raises(blesta_sim: str, blesta_state: BlestaState) -> None:
    blesta_state.fail_pages.add(2)
    client = await _client_for(blesta_sim)
    seen = []
    async with client:
        with pytest.raises(ServerError):
            async for page_no, _ in client.iter_pages("clients"):
                seen.append(page_no)
    assert seen == [1]  # page 3 is never reported past the failure


async def test_repeated_page_is_detected(blesta_sim: str, blesta_state: BlestaState) -> None:
    blesta_state.ignore_page = True
    client = await _client_for(blesta_sim)
    async with client:
        with pytest.raises(MalformedResponse, match="ignores paging"):
            await client.get_all("clients")
    blesta_state.disabled.add("clients/getListCount")
    async with client:
        with pytest.raises(MalformedResponse):
            await client.get_all("clients")


async def test_records_inserted_while_paging_are_not_lost(
    blesta_sim: str, blesta_state: BlestaState
) -> None:
    """Inserts land at the end (id order); after the counted pages the client keeps reading
    while the last page is full, so nothing is lost and nothing is duplicated."""
    del blesta_state.clients[40:]  # 40 → two full pages by count

    def insert(model: str, page: int) -> None:
        if model == "clients" and page == 1 and len(blesta_state.clients) < 45:
            for i in range(5):
                blesta_state.add_client(first_name=f"New{i}", last_name="X", email=f"n{i}@x.io")

    blesta_state.after_page = insert
    client = await _client_for(blesta_sim)
    async with client:
        ids = [r["id"] for r in await client.get_all("clients")]
    assert len(ids) == len(set(ids)) == 45
    assert ids == [c["id"] for c in blesta_state.clients]


async def test_concurrent_pages_respect_the_window(
    blesta_sim: str, blesta_state: BlestaState
) -> None:
    blesta_state.page_size = 2
    blesta_state.faults.latency = 0.01
    client = await _client_for(blesta_sim)
    async with client:
        rows = await client.get_all("clients", concurrency=3)
    assert len(rows) == 41
    assert 2 <= blesta_state.max_in_flight <= 4  # session limit 4, window 3 + count overlap


async def test_extract_runs_several_lists(blesta: BlestaClient, blesta_state: BlestaState) -> None:
    out = await blesta.extract(
        {
            "clients": ("clients", "getList", None),
            "invoices": ("invoices", "getList", {"status": "all"}),
            "packages": ("packages", "getList", None),
        }
    )
    assert len(out["clients"]) == 41
    assert len(out["invoices"]) == len(blesta_state.invoices)
    assert len(out["packages"]) == 5


# -- reports --------------------------------------------------------------------------------------


def test_parse_csv_tricky_cells() -> None:
    text = '\ufeff"Package","Revenue"\n"Hosting, ""Pro""","1.00"\n"VoIP\nTrunk","2"\n\n"short"\n'
    assert parse_csv(text) == [
        {"Package": 'Hosting, "Pro"', "Revenue": "1.00"},
        {"Package": "VoIP\nTrunk", "Revenue": "2"},
        {"Package": "short", "Revenue": ""},
    ]
    assert parse_csv("") == []


@pytest.mark.parametrize("bom", [False, True])
async def test_get_report_csv(blesta: BlestaClient, blesta_state: BlestaState, bom: bool) -> None:
    blesta_state.report_bom = bom
    rows = await blesta.get_report("package_revenue", "2024-03-01", "2024-03-31")
    assert [r["Package"] for r in rows] == [p["name"] for p in blesta_state.packages]
    assert rows[0]["Package"] == 'Hosting, "Pro" Plan'
    assert rows[1]["Package"] == "VoIP\nTrunk"
    assert set(rows[0]) == {"Package", "Revenue", "Currency", "Period"}
    _, _, _, args = blesta_state.calls[-1]
    assert args == {
        "type": "package_revenue",
        "vars": {"start_date": "2024-03-01", "end_date": "2024-03-31"},
        "format": "csv",
    }
    resp = await blesta.get(
        "report_manager", "fetchAll",
        {"type": "package_revenue", "vars": {"start_date": "2024-03-01", "end_date": "2024-03-31"}},
    )  # fmt: skip
    assert resp.is_csv and resp.csv_data == rows
    assert "attachment" in resp.headers["Content-Disposition"]


async def test_report_errors(blesta: BlestaClient) -> None:
    with pytest.raises(ValidationError) as info:
        await blesta.get_report("nope", "2024-01-01", "2024-01-31")
    assert "type" in info.value.field_errors
    available = (await blesta.get("report_manager", "getAvailable")).data
    assert "package_revenue" in available


async def test_report_series_periods(blesta: BlestaClient, blesta_state: BlestaState) -> None:
    got = [
        (p, rows) async for p, rows in blesta.report_series("package_revenue", "2024-11", "2025-02")
    ]
    assert [p for p, _ in got] == ["2024-11", "2024-12", "2025-01", "2025-02"]
    assert all(r["_period"] == p and r["Period"] == p for p, rows in got for r in rows)
    dates = [a["vars"] for _, _, m, a in blesta_state.calls if m == "fetchAll"]
    assert dates[1] == {"start_date": "2024-12-01", "end_date": "2024-12-31"}
    assert dates[3] == {"start_date": "2025-02-01", "end_date": "2025-02-28"}


async def test_report_series_to_current_month(blesta: BlestaClient) -> None:
    # FakeClock starts at 2025-01-01
    periods = [p async for p, _ in blesta.report_series("package_revenue", "2024-10", "current")]
    assert periods == ["2024-10", "2024-11", "2024-12", "2025-01"]


def test_months_helper() -> None:
    assert list(months("2024-12", "2024-11")) == []
    with pytest.raises(ValueError):
        list(months("2024-13", "2025-01"))


def test_to_dataframe_needs_pandas() -> None:
    rows: list[dict[str, Any]] = [{"a": 1}]
    try:
        import pandas  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pandas"):
            to_dataframe(rows)
    else:  # pragma: no cover - depends on the environment
        assert list(to_dataframe(rows)["a"]) == [1]


async def test_extract_failure_raises_the_typed_error(blesta: BlestaClient) -> None:
    with pytest.raises(NotFoundError):
        await blesta.extract(
            {"clients": ("clients", "getList", None), "bad": ("nosuch", "getList", None)}
        )
