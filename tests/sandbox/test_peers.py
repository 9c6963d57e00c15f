"""Published clients other people wrote, against `daemon sandbox`'s simulators (issue 15).

blesta-sdk, billomapy and halopsa pin conflicting `requests` versions, so each runs in its own
virtualenv (`tests/peer_venvs.py`, cached outside the repository between runs) as a subprocess
driver (`tests/sandbox/peers/`) that prints what it saw as JSON. The simulators run in this
test's event loop, exactly as `daemon sandbox` starts them. A peer that pip cannot install here
(no network) is skipped with the reason; any other failure fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.sandbox.orchestra import Sandbox, run_sandbox
from tests.peer_venvs import PeerInstallError, peer_python

pytestmark = [pytest.mark.peers, pytest.mark.timeout(900)]  # a first venv build downloads

DRIVERS = Path(__file__).resolve().parent / "peers"
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
PEERS = {
    "blesta-sdk": ["blesta-sdk==0.6.0"],
    "billomapy": ["billomapy==2.5.3"],  # pins requests==2.20.0
    "halopsa": ["halopsa==2.0.2"],
}


def peer(name: str) -> Path:
    try:
        return peer_python(name, PEERS[name])
    except PeerInstallError as exc:
        pytest.skip(f"pip cannot install {name} here: {exc.output[-300:]}")


@pytest.fixture(scope="session")
def blesta_sdk() -> Path:
    return peer("blesta-sdk")


@pytest.fixture(scope="session")
def billomapy() -> Path:
    return peer("billomapy")


@pytest.fixture(scope="session")
def halopsa() -> Path:
    return peer("halopsa")


async def drive(python: Path, driver: str, config: dict[str, Any]) -> Any:
    """Run a driver in the peer's virtualenv (isolated: it sees only the peer) and return the
    JSON it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = await asyncio.create_subprocess_exec(
        str(python),
        "-I",
        str(DRIVERS / driver),
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_blesta_sdk(blesta_sdk: Path, tmp_path: Path) -> None:
    async with run_sandbox(tmp_path, now=NOW) as sandbox:
        out = await drive(blesta_sdk, "blesta_sdk_driver.py", blesta_config(sandbox))
    state, licences = sandbox.states["blesta"], sandbox.states["reseller"].licenses
    b = out["blesta"]
    assert b["client_ids"] == [c["id"] for c in state.clients]
    assert b["invoices_all"] == len(state.invoices) > b["invoices_default"] > 0  # open only
    assert b["client_5"]["id"] == "5" and b["client_missing"] is False
    assert b["count"] == b["count_for"] == len(state.clients)
    assert b["status_count"] == sum(c["status"] == "active" for c in state.clients)
    assert b["report_status"] == 200
    assert [r["Package"] for r in b["report_rows"]] == [p["name"] for p in state.packages]
    assert {r["_period"] for r in b["series"]} == {"2024-01", "2024-02", "2024-03"}
    assert b["header_ids"] == [c["id"] for c in state.clients if c["status"] == "active"]
    assert b["wrong_key_status"] == 401
    r = out["reseller"]
    keys = [lic["fields"]["license_module_key"] for lic in licences]
    assert r["credit"] == sandbox.states["reseller"].credit
    assert r["page_2"] == keys[25:50]  # `vars[page]` pages
    # blesta-sdk's pager sends a bare `page`, which the Reseller API ignores: page 1 comes back
    # until the SDK's repeat guard stops it, exactly as against the real server
    assert r["get_all"] == keys[:25] * 3


def blesta_config(sandbox: Sandbox) -> dict[str, Any]:
    blesta, reseller = sandbox.states["blesta"], sandbox.states["reseller"]
    (user, key), (reseller_user, password) = *blesta.users.items(), *reseller.users.items()
    return {
        "blesta_url": sandbox.urls["blesta"],
        "user": user,
        "key": key,
        # the SDK appends `{model}/{method}.json`: the Reseller controller is model `index`
        "reseller_url": sandbox.urls["reseller"].removesuffix("/index"),
        "reseller_user": reseller_user,
        "reseller_password": password,
    }


@pytest.mark.parametrize("registered", [False, True], ids=["no-app", "demo-app"])
async def test_billomapy(billomapy: Path, tmp_path: Path, registered: bool) -> None:
    async with run_sandbox(tmp_path, now=NOW, demo_size=2100) as sandbox:
        state = sandbox.states["billomat"]
        app_id = sorted(state.apps)[0] if registered else ""  # what a user without an app sends
        config = {
            "url": sandbox.urls["billomat"],
            "billomat_id": state.billomat_id,
            "api_key": sorted(state.api_keys)[0],
            "app_id": app_id,
            "app_secret": state.apps[app_id] if registered else "",
        }
        out = await drive(billomapy, "billomapy_driver.py", config)
        used = sum(n for (_, reg), n in state.usage.items() if reg == registered)
    assert out["pages"] == [["1", "1000", "2100"], ["2", "1000", "2100"], ["3", "1000", "2100"]]
    assert out["client_ids"] == [str(i) for i in range(1, 2101)]
    assert out["client_5"]["name"] == "Kunde 5 GmbH"
    assert out["created"]["id"] == "2101" and out["created"]["name"] == "Peer GmbH"
    assert out["updated_name"] == out["fetched_name"] == "Peer AG"
    assert (out["deleted_status"], out["gone_status"]) == (200, 404)
    assert out["march_dates"] and all(d.startswith("2025-03") for d in out["march_dates"])
    # 3 client pages, create, update, get, delete, the get that 404s, 1 invoice page, get 5:
    # every request counted against the quota of the app (or none) it was sent under
    assert used == 10


async def test_halopsa(halopsa: Path, tmp_path: Path) -> None:
    async with run_sandbox(tmp_path, now=NOW) as sandbox:
        state = sandbox.halo
        config = {
            "url": sandbox.urls["halo"],
            "tenant": "sandbox",
            "client_id": state.client_id,
            "client_secret": state.client_secret,
        }
        out = await drive(halopsa, "halopsa_driver.py", config)
    total = len(state.table("Tickets"))
    assert out["record_count"] == total == 120
    assert out["page_sizes"] == [50, 50, 20]
    assert out["ids"] == list(range(1, total + 1))
    assert out["unpaged"] == 50  # halopsa's default count, as upstream-apis §4 notes
    assert out["ticket_7"]["id"] == 7
    assert out["saved"]["id"] == 7 and out["after"] == "Edited by halopsa"
    assert 9 not in out["open_statuses"]  # `open_only=True`, as Python spells it
    assert out["actions_of_3"] == [3, 3]
    assert state.stats.token_requests == 1  # the token from halopsa's constructor
    assert state.token_queries == [{}]  # sent without ?tenant=, accepted (upstream-apis §4)


def test_peer_venv_is_reused(tmp_path: Path) -> None:
    """A second call finds the cached venv without running pip (what makes CI's second run
    fast); an unknown package is a PeerInstallError, which the peer tests turn into a skip."""
    root = tmp_path / "cache"
    with pytest.raises(PeerInstallError, match="nope"):
        peer_python("nope", ["not a requirement!"], root=root)  # pip refuses it at once
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    python = peer_python("empty", [], root=root)
    again = peer_python("empty", [], root=root)
    assert python == again and python.is_file()
    assert str(python).startswith(str(root)) and sys.executable != str(python)
