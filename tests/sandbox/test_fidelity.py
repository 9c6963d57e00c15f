"""The fidelity holes of issue 15, each answered as upstream-apis.md says the real API does.

Raw HTTP against the simulators on loopback, so what is tested is the wire, not our clients.
"""

from __future__ import annotations

import ast
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.sandbox.billomat_sim import BillomatState, serve_billomat
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.blesta_sim import make_app as make_blesta_app
from daemon.sandbox.halo_sim import HaloState, serve_halo
from daemon.sandbox.netsapiens_sim import NetsapiensState, serve_netsapiens
from daemon.sandbox.reseller_sim import BASE_PATH, ResellerState
from daemon.sandbox.reseller_sim import make_app as make_reseller_app
from daemon.sandbox.server import serve_app

SANDBOX = Path(__file__).resolve().parents[2] / "daemon" / "sandbox"


def basic(user: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- simulators own their truth ----------------------------------------------------------------


def test_simulators_import_nothing_from_the_code_they_test() -> None:
    """A table copied from the client or the config could hide the client's mistakes."""
    offenders = []
    for path in SANDBOX.glob("*.py"):
        if path.name in ("orchestra.py",):  # the orchestra writes a config, by design
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("daemon.clients", "daemon.config", "daemon.sync", "daemon.store")
            ):
                offenders.append(f"{path.name}: {node.module}")
    assert offenders == []


# -- Reseller: one licence key -----------------------------------------------------------------


async def test_reseller_key_from_addlicense_is_the_key_search_lists(
    http: aiohttp.ClientSession,
) -> None:
    state = ResellerState.demo(licenses=3, seed=2)
    auth = basic("reseller", "demo-reseller-pass")
    async with serve_app(make_reseller_app(state)) as root:
        base = root + BASE_PATH
        form = {"vars[pricing_id]": "11"}
        async with http.post(f"{base}/addlicense.json", data=form, headers=auth) as resp:
            key = (await resp.json())["response"]
        async with http.get(f"{base}/search.json", headers=auth) as resp:
            rows = (await resp.json())["response"]
        assert [r["fields"]["license_module_key"] for r in rows][-1] == key
        assert all("license" not in r for r in rows)  # no invented second key
        synced = rows[0]["fields"]["license_module_key"]  # a key as a sync stores it
        form = {"vars[license]": synced}
        async with http.post(f"{base}/suspendlicense.json", data=form, headers=auth) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/cancellicense.json", data=form, headers=auth) as resp:
            assert resp.status == 200
        async with http.get(f"{base}/search.json", headers=auth) as resp:
            listed = [r["fields"]["license_module_key"] for r in (await resp.json())["response"]]
    assert synced not in listed and len(listed) == 3


# -- Blesta: methods and formats ---------------------------------------------------------------


@pytest.fixture
async def blesta(http: aiohttp.ClientSession) -> AsyncIterator[tuple[str, BlestaState]]:
    state = BlestaState.demo(clients=30, seed=1)
    async with serve_app(make_blesta_app(state)) as root:
        yield root + "/api", state


async def blesta_get(
    http: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None
) -> tuple[int, str, str]:
    async with http.get(url, params=params, headers=basic("sync", "demo-blesta-key")) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_blesta_get_status_count_and_packages_get_all(
    http: aiohttp.ClientSession, blesta: tuple[str, BlestaState]
) -> None:
    api, state = blesta
    status, _, text = await blesta_get(http, f"{api}/clients/getStatusCount.json")
    active = sum(1 for c in state.clients if c["status"] == "active")
    assert status == 200 and json.loads(text) == {"response": active}  # default: active
    _, _, text = await blesta_get(
        http, f"{api}/clients/getStatusCount.json", {"status": "inactive"}
    )
    assert json.loads(text)["response"] == sum(c["status"] == "inactive" for c in state.clients)
    _, _, text = await blesta_get(http, f"{api}/packages/getAll.json", {"company_id": "1"})
    names = [p["name"] for p in json.loads(text)["response"]]
    assert names == sorted(p["name"] for p in state.packages)  # order name ASC by default
    status, _, text = await blesta_get(http, f"{api}/packages/getAll.json")
    assert status == 500 and "default value" in text  # company_id is required


async def test_blesta_report_as_json(
    http: aiohttp.ClientSession, blesta: tuple[str, BlestaState]
) -> None:
    api, state = blesta
    params = {
        "type": "package_revenue",
        "format": "json",
        "vars[start_date]": "2024-03-01",
        "vars[end_date]": "2024-03-31",
    }
    status, ctype, text = await blesta_get(http, f"{api}/report_manager/fetchAll.json", params)
    rows = json.loads(text)
    assert status == 200 and ctype.startswith("text/json")
    assert [r["package"] for r in rows] == [p["name"] for p in state.packages]
    assert all(isinstance(r["revenue"], float | int) and r["period"] == "2024-03" for r in rows)
    status, _, text = await blesta_get(
        http, f"{api}/report_manager/fetchAll.json", {**params, "format": "pdf"}
    )
    assert status == 400 and "format" in json.loads(text)["errors"]


async def test_blesta_serves_xml_and_php_and_refuses_other_formats(
    http: aiohttp.ClientSession, blesta: tuple[str, BlestaState]
) -> None:
    api, _ = blesta
    status, ctype, text = await blesta_get(http, f"{api}/clients/get.xml", {"client_id": "1"})
    assert status == 200 and ctype.startswith("application/xml")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8" ?>\n<clients>\n\t<response>')
    assert "\t\t<id>1</id>" in text
    status, ctype, text = await blesta_get(http, f"{api}/clients/getListCount.PHP")
    assert status == 200 and ctype.startswith("text/plain")
    assert text == 'a:1:{s:8:"response";i:30;}'
    status, _, text = await blesta_get(http, f"{api}/clients/get.php", {"client_id": "2"})
    assert text.startswith('a:1:{s:8:"response";O:8:"stdClass":')
    status, ctype, text = await blesta_get(http, f"{api}/nosuch/getList.xml")
    assert status == 404 and "<message>The requested resource does not exist.</message>" in text
    for bad in ("clients/getList.yaml", "clients/getList"):
        status, ctype, text = await blesta_get(http, f"{api}/{bad}")
        assert status == 415 and ctype.startswith("application/json")


# -- Billomat: date ranges, HEAD, app headers --------------------------------------------------


@pytest.fixture
async def billomat() -> AsyncIterator[tuple[str, BillomatState]]:
    state = BillomatState(demo_size=120)
    async with serve_billomat(state) as url:
        yield url, state


JSON = {"X-BillomatApiKey": "demo-key", "Accept": "application/json"}


async def test_billomat_invoice_from_to_is_a_date_range(
    http: aiohttp.ClientSession, billomat: tuple[str, BillomatState]
) -> None:
    url, state = billomat
    params = {"from": "2025-03-01", "to": "2025-03-31", "per_page": "1000"}
    async with http.get(f"{url}/invoices", params=params, headers=JSON) as resp:
        root = (await resp.json())["invoices"]
    march = [r["id"] for r in state.table("invoices") if r["date"].startswith("2025-03")]
    assert march and [r["id"] for r in root["invoice"]] == march
    assert root["@total"] == str(len(march))
    params = {"from": "2025-03-10", "status": "PAID,OPEN"}
    async with http.get(f"{url}/invoices", params=params, headers=JSON) as resp:
        rows = (await resp.json())["invoices"]["invoice"]
    assert rows and all(r["date"] >= "2025-03-10" and r["status"] in ("PAID", "OPEN") for r in rows)


async def test_billomat_head_answers_x_total_count(
    http: aiohttp.ClientSession, billomat: tuple[str, BillomatState]
) -> None:
    url, _ = billomat
    async with http.head(f"{url}/invoices", params={"status": "PAID"}, headers=JSON) as resp:
        assert resp.status == 200 and await resp.read() == b""
        assert resp.headers["X-Total-Count"] == "30"
    async with http.head(f"{url}/clients", headers=JSON) as resp:
        assert resp.headers["X-Total-Count"] == "120"


@pytest.mark.parametrize(
    ("app_id", "app_secret", "status", "quota"),
    [
        ("", "", 200, "299"),  # what billomapy sends without an app: no app
        ("demo-app", "demo-app-secret", 200, "999"),  # a registered app: the higher quota
        ("demo-app", "wrong", 401, None),
        ("demo-app", "", 401, None),
        ("", "demo-app-secret", 401, None),
    ],
)
async def test_billomat_empty_app_headers_are_no_app(
    http: aiohttp.ClientSession,
    billomat: tuple[str, BillomatState],
    app_id: str,
    app_secret: str,
    status: int,
    quota: str | None,
) -> None:
    url, _ = billomat
    headers = {**JSON, "X-AppId": app_id, "X-AppSecret": app_secret}
    async with http.get(f"{url}/clients", headers=headers) as resp:
        assert resp.status == status
        assert resp.headers.get("X-Rate-Limit-Remaining") == quota


# -- Halo: actions per ticket, Python booleans, order ------------------------------------------


async def halo_get(http: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    form = {"grant_type": "client_credentials", "client_id": "halo-client"}
    form["client_secret"] = "halo-secret"
    async with http.post(f"{url}/auth/token", data=form) as resp:
        token = (await resp.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{url}/api/{path}", params=params, headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_halo_actions_are_listed_per_ticket(http: aiohttp.ClientSession) -> None:
    async with serve_halo(HaloState(demo_size=120)) as url:
        unscoped = await halo_get(http, url, "Actions")
        scoped = await halo_get(http, url, "Actions", ticket_id="7")
        paged = await halo_get(
            http, url, "Actions", ticket_id="7", pageinate="True", page_size="1", page_no="2"
        )
    assert unscoped == {"record_count": 0, "actions": []}
    assert scoped["record_count"] == 2 and {a["ticket_id"] for a in scoped["actions"]} == {7}
    assert [a["id"] for a in paged["actions"]] == [scoped["actions"][1]["id"]]


async def test_halo_reads_python_booleans_and_order(http: aiohttp.ClientSession) -> None:
    async with serve_halo(HaloState(demo_size=40)) as url:
        opened = await halo_get(http, url, "Tickets", open_only="True", count="100")
        newest = await halo_get(
            http, url, "Tickets", pageinate="True", page_size="3", order="id", orderdesc="True"
        )
    assert opened["record_count"] == 30 and all(t["status_id"] != 9 for t in opened["tickets"])
    assert [t["id"] for t in newest["tickets"]] == [40, 39, 38]


# -- NetSapiens: lists page with start ---------------------------------------------------------


async def test_netsapiens_sessions_page_with_start(http: aiohttp.ClientSession) -> None:
    state = NetsapiensState.demo(200)
    async with serve_netsapiens(state) as url:
        body = {
            "grant_type": "password",
            "client_id": "ns-client",
            "client_secret": "ns-secret",
            "username": "api@demo",
            "password": "demo-password",
        }
        async with http.post(f"{url}/ns-api/v2/tokens", json=body) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        pages = []
        for start in (0, 4, 8):
            async with http.get(
                f"{url}/ns-api/v2/domains/~/messagesessions",
                params={"start": str(start), "limit": "4"},
                headers=headers,
            ) as resp:
                pages.append(await resp.json())
    ids = [s["messagesession-id"] for page in pages for s in page]
    assert [len(p) for p in pages] == [4, 4, 2] and len(set(ids)) == 10
    stamps = [s["messagesession-last-datetime"] for page in pages for s in page]
    assert stamps == sorted(stamps, reverse=True)  # newest conversation first
