"""`daemon api blesta` / `daemon api reseller` as a user runs them: a subprocess with a TOML
config pointing at simulators served by this test's event loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from daemon.clients.blesta import BlestaClient
from daemon.clients.blesta_reseller import ResellerClient
from daemon.commands import api_blesta, api_reseller
from daemon.errors import ConfigError
from tests.clients.blesta_fixtures import (
    BLESTA_KEY,
    BLESTA_USER,
    RESELLER_PASSWORD,
    RESELLER_USER,
)


def write_config(tmp_path: Path, blesta_url: str, reseller_url: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f"""
[daemon]
database = "{tmp_path / "state.db"}"

[upstreams.blesta]
url = "{blesta_url}"
user = "{BLESTA_USER}"
key = "{BLESTA_KEY}"
timeout = "5s"
max_retries = 1

[upstreams.reseller]
kind = "blesta_reseller"
url = "{reseller_url}"
user = "{RESELLER_USER}"
password = "{RESELLER_PASSWORD}"
max_retries = 1
"""
    )
    path.chmod(0o600)
    return path


async def run_cli(*args: str) -> tuple[int, str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def config(tmp_path: Path, blesta_sim: str, reseller_sim: str) -> Path:
    pytest.importorskip("daemon.config", reason="daemon/config.py not written yet")
    return write_config(tmp_path, blesta_sim, reseller_sim)


async def test_blesta_get_list(config: Path) -> None:
    code, out, err = await run_cli(
        "api", "blesta", "clients", "getList", "status=active", "--config", str(config)
    )
    assert code == 0, err
    rows = json.loads(out)
    assert rows and {r["status"] for r in rows} == {"active"}
    assert len(rows) <= 20  # one page


async def test_blesta_all_pages_and_bracket_args(config: Path) -> None:
    code, out, err = await run_cli(
        "--config", str(config), "api", "blesta", "clients", "getList", "--all",
        "order_by[id]=DESC", "--show-request",
    )  # fmt: skip
    assert code == 0, err
    ids = [int(r["id"]) for r in json.loads(out)]
    assert len(ids) == 41 and ids == sorted(ids, reverse=True)
    assert "order_by[id]" in err  # --show-request prints to stderr


async def test_blesta_post(config: Path) -> None:
    code, out, err = await run_cli(
        "api", "blesta", "clients", "add", "--verb", "POST", "vars[first_name]=Ann",
        "vars[last_name]=Lee", "vars[email]=ann@example.com", "--config", str(config),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == "42"


async def test_blesta_404_exits_1_with_error_json(config: Path) -> None:
    code, _out, err = await run_cli("api", "blesta", "nosuch", "getList", "--config", str(config))
    assert code == 1
    error = json.loads(err)
    assert error["error"] == "NotFoundError" and error["status"] == 404
    assert BLESTA_KEY not in err


@pytest.mark.parametrize(
    ("model", "method"),
    [("http://127.0.0.1:9/steal", "x"), ("HTTPS://elsewhere", "x"), ("..", "getList"),
     ("clients", "../../x"), ("clients", "get List")],
)  # fmt: skip
async def test_blesta_model_and_method_are_names_not_urls(
    config: Path, model: str, method: str
) -> None:
    """Found by probing: a full URL as the model was passed through, and the request carried
    Blesta's Basic credentials to the host it named."""
    code, out, err = await run_cli("api", "blesta", model, method, "--config", str(config))
    assert code == 2 and out == ""
    assert "name" in err and BLESTA_KEY not in err


async def test_reseller_commands(config: Path) -> None:
    code, out, err = await run_cli("api", "reseller", "getcredit", "--config", str(config))
    assert code == 0, err
    assert json.loads(out) == 500.0
    code, out, err = await run_cli("api", "reseller", "search", "--config", str(config))
    assert code == 0, err
    assert len(json.loads(out)) == 30


# -- in process (no config file needed) -----------------------------------------------------------


def test_parse_kv_args() -> None:
    assert api_blesta.parse_kv_args(
        ["status=active", "filters[client_group_id]=2", "a=1", "a=2", "ids[]=7", "ids[]=8",
         "vars[lines][0][amount]=5", "q=x=y"]
    ) == {
        "status": "active",
        "filters": {"client_group_id": "2"},
        "a": ["1", "2"],
        "ids": {"0": "7", "1": "8"},
        "vars": {"lines": {"0": {"amount": "5"}}},
        "q": "x=y",
    }  # fmt: skip
    with pytest.raises(ConfigError):
        api_blesta.parse_kv_args(["novalue"])
    with pytest.raises(ConfigError):
        api_blesta.parse_kv_args(["a=1", "a[b]=2"])


def test_parser_accepts_documented_forms() -> None:
    from daemon.cli import build_parser

    args = build_parser().parse_args(
        ["api", "blesta", "clients", "getList", "status=active", "--method-verb", "post", "--all"]
    )
    rest = api_blesta.split_params(args)  # options after KEY=VALUE are honoured too
    assert (args.model, args.method, args.verb, args.all, rest) == (
        "clients", "getList", "POST", True, ["status=active"],
    )  # fmt: skip
    args = build_parser().parse_args(["api", "blesta", "clients", "getList", "oops"])
    with pytest.raises(ConfigError):
        api_blesta.split_params(args)
    args = build_parser().parse_args(["api", "reseller", "getCredit"])
    assert args.method == "getcredit"


async def test_call_helpers(blesta: BlestaClient, reseller: ResellerClient) -> None:
    ns = argparse.Namespace(all=True, model="clients", method="getList", verb="GET")
    assert len(await api_blesta._call(blesta, ns, {"status": "all"})) == 41
    ns = argparse.Namespace(all=False, model="report_manager", method="fetchAll", verb="GET")
    rows = await api_blesta._call(
        blesta, ns,
        {"type": "package_revenue", "vars": {"start_date": "2024-01-01", "end_date": "2024-01-31"}},
    )  # fmt: skip
    assert rows[0]["Package"] == 'Hosting, "Pro" Plan'
    assert await api_reseller._call(reseller, "getcredit", {}) == 500.0
    key = await api_reseller._call(reseller, "addlicense", {"pricing_id": "11"})
    assert await api_reseller._call(reseller, "suspendlicense", {"license": key}) is True
    with pytest.raises(ConfigError):
        await api_reseller._call(reseller, "update", {})


@pytest.mark.parametrize("bad", [".", "..", "   "])
def test_a_record_id_that_names_another_path_is_a_usage_error(bad: str) -> None:
    """Found by probing: `api halo tickets get ..` ended as an internal error (a ValueError
    from the path segment check), not a usage error."""
    from argparse import Namespace

    from daemon.commands.api_halo import UsageError, record_id

    with pytest.raises(UsageError, match=r"not a record id|needs --id"):
        record_id(Namespace(id=bad.strip() or None), [], "get")
    with pytest.raises(UsageError):
        record_id(Namespace(id=None), [bad] if bad.strip() else [], "get")
