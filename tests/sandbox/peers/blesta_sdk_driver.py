"""blesta-sdk 0.6.0 against the Blesta and Reseller simulators (see the package docstring)."""

from __future__ import annotations

import json
import sys
from typing import Any

from blesta_sdk import BlestaRequest


def ids(rows: Any, key: str = "id") -> list[Any]:
    return [r[key] for r in rows]


def blesta(cfg: dict[str, Any]) -> dict[str, Any]:
    api = BlestaRequest(cfg["blesta_url"], cfg["user"], cfg["key"])
    report = api.get_report("package_revenue", "2024-01-01", "2024-01-31")
    header = BlestaRequest(cfg["blesta_url"], cfg["user"], cfg["key"], auth_method="header")
    wrong = BlestaRequest(cfg["blesta_url"], cfg["user"], "wrong-key", auth_method="header")
    return {
        "client_ids": ids(api.get_all("clients", "getList", on_error="raise")),
        "invoices_default": len(api.get_all("invoices", "getList", on_error="raise")),
        "invoices_all": len(api.get_all("invoices", "getList", {"status": "all"})),
        "client_5": api.get("clients", "get", {"client_id": 5}).data,
        "client_missing": api.get("clients", "get", {"client_id": 99999}).data,
        "count": api.count("clients"),
        "count_for": api.count_for("clients"),
        "status_count": api.count("clients", "getStatusCount"),
        "report_status": report.status_code,
        "report_rows": report.csv_data,
        "series": api.get_report_series("package_revenue", "2024-01", "2024-03"),
        "header_ids": ids(header.get_all("clients", "getList", {"status": "active"})),
        "wrong_key_status": wrong.get("clients", "getList").status_code,
    }


def reseller(cfg: dict[str, Any]) -> dict[str, Any]:
    api = BlestaRequest(cfg["reseller_url"], cfg["reseller_user"], cfg["reseller_password"])
    key = "license_module_key"
    page_2 = api.get("index", "search", {"vars[page]": 2})
    return {
        "credit": api.get("index", "getcredit").data,
        "page_2": [r["fields"][key] for r in page_2.data],
        # the SDK's pager sends `page`, which the Reseller API ignores (upstream-apis §1)
        "get_all": [r["fields"][key] for r in api.get_all("index", "search")],
    }


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print(json.dumps({"blesta": blesta(config), "reseller": reseller(config)}))
