"""`daemon sandbox`: the demo size scales every simulator; the config spells what the APIs spell."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.sandbox.orchestra import DEFAULT_SIZES, demo_states, run_sandbox

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def sizes(s: dict[str, Any]) -> dict[str, int]:
    return {
        "blesta": len(s["blesta"].clients),
        "reseller": len(s["reseller"].licenses),
        "billomat": len(s["billomat"].table("clients")),
        "halo": len(s["halo"].table("Tickets")),
        "netsapiens": len(s["netsapiens"].cdrs),
    }


def test_default_and_scaled_demo_sizes() -> None:
    assert sizes(demo_states()) == DEFAULT_SIZES
    assert set(sizes(demo_states(250)).values()) == {250}


def test_demo_data_is_deterministic() -> None:
    a, b = demo_states(30), demo_states(30)
    assert list(a["blesta"].invoices) == list(b["blesta"].invoices)
    assert list(a["reseller"].licenses) == list(b["reseller"].licenses)
    assert list(a["netsapiens"].cdrs) == list(b["netsapiens"].cdrs)


async def test_config_uses_the_api_spelling_and_a_demo_billomat_app(tmp_path: Path) -> None:
    async with run_sandbox(tmp_path, now=NOW, demo_size=25) as sandbox:
        config = tomllib.loads(sandbox.config_path.read_text())
        assert sandbox.config_path.stat().st_mode & 0o077 == 0
        billomat = sandbox.states["billomat"]
        assert (
            billomat.apps[config["upstreams"]["billomat"]["app_id"]]
            == (config["upstreams"]["billomat"]["app_secret"])
        )
        assert len(sandbox.halo.table("Tickets")) == 25
        assert "rate_limit" not in config["upstreams"]["halo"]  # a large demo must finish
    async with run_sandbox(tmp_path / "default", now=NOW) as default:
        halo = tomllib.loads(default.config_path.read_text())["upstreams"]["halo"]
        assert halo["rate_limit"] == "300/5m"  # hosted Halo's budget by default
    reseller_jobs = [j["resource"] for j in config["sync"] if j["upstream"] == "reseller"]
    assert reseller_jobs == ["search", "getcredit"]  # Reseller method names, as DESIGN gives


def test_demo_size_flag_is_validated() -> None:
    for bad in ("0", "lots"):
        proc = subprocess.run(
            [sys.executable, "-m", "daemon", "sandbox", "--demo-size", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "--demo-size" in proc.stderr
