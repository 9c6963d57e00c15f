"""ResellerClient against the Reseller simulator over loopback."""

from __future__ import annotations

import pytest

from daemon.clients.blesta_reseller import ResellerClient
from daemon.clock import FakeClock
from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    ValidationError,
)
from daemon.sandbox.reseller_sim import ResellerState
from tests.clients.blesta_fixtures import RESELLER_PASSWORD, fast_options, reseller_settings


async def test_getcredit_and_catalogue(reseller: ResellerClient) -> None:
    assert await reseller.getcredit() == 500.0
    packages = await reseller.getpackages()
    assert [p["name"] for p in packages] == ["Blesta Owned", "Blesta Monthly"]
    pricing = await reseller.getpackagepricing(1)
    assert {p["id"] for p in pricing} == {"11", "12"}
    assert pricing[0]["price"] == "12.9500"  # values as strings


async def test_addlicense_charges_and_returns_key(
    reseller: ResellerClient, reseller_state: ResellerState
) -> None:
    key = await reseller.addlicense(11)
    assert reseller_state.find(key) is not None
    assert await reseller.getcredit() == pytest.approx(500.0 - 12.95)
    method, name, _args = reseller_state.calls[-2]
    assert (method, name) == ("POST", "addlicense")


async def test_addlicense_test_mode(
    reseller: ResellerClient, reseller_state: ResellerState
) -> None:
    before = len(reseller_state.licenses)
    key = await reseller.addlicense("12", test_mode=True)
    assert key.startswith("TEST")
    assert len(reseller_state.licenses) == before
    assert reseller_state.calls[-1][2] == {"vars": {"pricing_id": "12", "test_mode": "true"}}


async def test_licence_lifecycle(reseller: ResellerClient, reseller_state: ResellerState) -> None:
    key = reseller_state.licenses[0]["fields"]["license_module_key"]
    await reseller.suspendlicense(key)
    assert reseller_state.find(key)["status"] == "suspended"  # type: ignore[index]
    await reseller.unsuspendlicense(key)
    assert reseller_state.find(key)["status"] == "active"  # type: ignore[index]
    await reseller.update_reissue(key)
    lic = reseller_state.find(key)
    assert lic is not None and lic["fields"]["license_module_reissue_status"] == "reissue"
    assert reseller_state.calls[-1][2] == {"vars": {"license": key, "reissue_status": "reissue"}}
    await reseller.cancellicense(key, test_mode=True)
    assert reseller_state.find(key)["status"] == "active"  # type: ignore[index]
    await reseller.cancellicense(key)
    assert reseller_state.find(key)["status"] == "canceled"  # type: ignore[index]
    assert key not in {r["fields"]["license_module_key"] for r in await reseller.search_all()}


async def test_errors(reseller: ResellerClient) -> None:
    with pytest.raises(ValidationError) as info:
        await reseller.suspendlicense("nope")
    assert info.value.field_errors == {"license": ["The license could not be found."]}
    with pytest.raises(ValidationError):
        await reseller.addlicense(999)
    with pytest.raises(NotFoundError):
        await reseller.call("GET", "nosuch")
    with pytest.raises(ForbiddenError):
        await reseller.call("GET", "index")
    with pytest.raises(ServerError, match="default value"):
        await reseller.call("GET", "getpackagepricing")


async def test_insufficient_credit(reseller: ResellerClient, reseller_state: ResellerState) -> None:
    reseller_state.credit = 1.0
    with pytest.raises(ValidationError) as info:
        await reseller.addlicense(12)
    assert "credit" in info.value.field_errors


async def test_maintenance_and_post_not_retried_on_500(
    reseller: ResellerClient, reseller_state: ResellerState, fake_clock: FakeClock
) -> None:
    reseller_state.faults.update({"fail_next": 1, "fail_status": 500})
    with pytest.raises(ServerError):
        await reseller.addlicense(11)
    assert fake_clock.sleeps == []
    reseller_state.maintenance = True
    with pytest.raises(ServerError, match="maintenance"):
        await reseller.getcredit()
    assert len(fake_clock.sleeps) == 3


async def test_bad_password(reseller_sim: str) -> None:
    client = ResellerClient.create(reseller_sim, "reseller", "wrong", clock=FakeClock())
    async with client:
        with pytest.raises(AuthError):
            await client.getcredit()


async def test_from_settings(reseller_sim: str) -> None:
    client = ResellerClient.from_settings(reseller_settings(reseller_sim), clock=FakeClock())
    assert RESELLER_PASSWORD in client.session.secrets
    async with client:
        assert await client.getcredit() == 500.0


async def test_wrong_format_is_415(reseller: ResellerClient) -> None:
    with pytest.raises(Exception) as info:
        await reseller.session.request("GET", "getcredit.xml")
    assert getattr(info.value, "status", None) == 415


@pytest.fixture
def reseller_state(request: pytest.FixtureRequest) -> ResellerState:
    """Overrides the shared fixture so a test can ask for N licences via indirect params."""
    return ResellerState.demo(licenses=getattr(request, "param", 30), seed=3)


@pytest.mark.parametrize(
    ("reseller_state", "pages"),
    [(0, 0), (10, 1), (25, 1), (26, 2), (50, 2), (51, 3)],
    indirect=["reseller_state"],
)
async def test_search_walks_all_pages(
    reseller: ResellerClient, reseller_state: ResellerState, pages: int
) -> None:
    got = [(p, len(rows)) async for p, rows in reseller.search_pages()]
    assert len(got) == pages
    keys = [r["fields"]["license_module_key"] for r in await reseller.search_all()]
    assert keys == [lic["fields"]["license_module_key"] for lic in reseller_state.licenses]
    assert len(set(keys)) == len(keys)
    sent = [a["vars"]["page"] for m, name, a in reseller_state.calls if name == "search"]
    assert "page" not in reseller_state.calls[-1][2]  # `vars[page]`, never a bare `page`
    assert sent[0] == "1"


async def test_search_term_filters(reseller: ResellerClient, reseller_state: ResellerState) -> None:
    rows = await reseller.search_all("billing7.example.com")
    assert [r["fields"]["license_module_domains"] for r in rows] == [["billing7.example.com"]]


async def test_search_repeated_page_detected(
    reseller_sim: str, reseller_state: ResellerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.sandbox.reseller_sim as sim

    original = sim.METHODS["search"]
    # a server that ignores the page number, as upstream does for a bare `page`
    monkeypatch.setitem(sim.METHODS, "search", lambda s, a: original(s, {"vars": {}}))
    client = ResellerClient.create(
        reseller_sim, "reseller", RESELLER_PASSWORD, clock=FakeClock(), options=fast_options()
    )
    async with client:
        with pytest.raises(MalformedResponse, match="ignores paging"):
            await client.search_all()
