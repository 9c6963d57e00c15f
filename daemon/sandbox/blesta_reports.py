"""Reports of the simulated Blesta: `report_manager/getAvailable`, `getFormats`, `fetchAll`.

`fetchAll` streams a file, never the JSON envelope (upstream-apis §1, blesta-core
`report_manager.php`): `format=csv` (the default) is a `text/csv` attachment whose first row holds
the columns' display names and every cell quoted; `format=json` (recent Blesta) is a `text/json`
attachment holding an array of rows keyed by column, pretty-printed with numeric strings turned
into numbers (PHP's `JSON_NUMERIC_CHECK`). Any other format is a 400 `format.valid` error.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.sandbox import demo_data as dd
from daemon.sandbox.blesta_formats import PhpArray
from daemon.sandbox.blesta_php import ApiError
from daemon.sandbox.blesta_sim_models import handler, required

if TYPE_CHECKING:
    from daemon.sandbox.blesta_sim import BlestaState

REPORTS = {"package_revenue": "Package Revenue", "tax_liability": "Tax Liability"}
FORMATS = {"csv": "CSV", "json": "JSON"}
COLUMNS = {  # report → (key, display name) per column
    "package_revenue": (
        ("package", "Package"),
        ("revenue", "Revenue"),
        ("currency", "Currency"),
        ("period", "Period"),
    ),
    "tax_liability": (
        ("invoice", "Invoice"),
        ("tax_name", "Tax Name"),
        ("tax_amount", "Tax Amount"),
        ("currency", "Currency"),
    ),
}
_PHP_NUMERIC = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


@handler("report_manager/getAvailable")
def reports_available(state: BlestaState, args: dict[str, Any]) -> Any:
    fmt = str(args.get("format", "any"))
    return PhpArray(REPORTS) if fmt == "any" or fmt in FORMATS else PhpArray()


@handler("report_manager/getFormats")
def reports_formats(state: BlestaState, args: dict[str, Any]) -> Any:
    return PhpArray(FORMATS)


def _date(value: Any, name: str) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ApiError(400, errors={name: {"format": f"Please enter a valid {name}."}}) from None


def report_rows(state: BlestaState, report_type: str, start: date) -> list[list[str]]:
    """The report's data rows (without the heading row)."""
    period = f"{start.year:04d}-{start.month:02d}"
    rows = []
    if report_type == "package_revenue":
        for p in state.packages:
            r = dd.rng(int(p["id"]), state.seed, f"rev:{period}")
            rows.append([p["name"], f"{r.randrange(0, 900000) / 100:.2f}", "USD", period])
        return rows
    for inv in state.invoices[:10]:
        r = dd.rng(int(inv["id"]), state.seed, f"tax:{period}")
        rows.append([inv["id_code"], 'Sales Tax "NY"', f"{r.randrange(0, 5000) / 100:.2f}", "USD"])
    return rows


def _numeric(cell: str) -> Any:
    """PHP's JSON_NUMERIC_CHECK: a numeric string becomes a number."""
    if not _PHP_NUMERIC.fullmatch(cell):
        return cell
    number = float(cell)
    return int(number) if re.fullmatch(r"\s*[+-]?\d+\s*", cell) else number


def _csv(state: BlestaState, report_type: str, rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow([name for _, name in COLUMNS[report_type]])
    writer.writerows(rows)
    return ("\ufeff" if state.report_bom else "") + buf.getvalue()


def _json(report_type: str, rows: list[list[str]]) -> str:
    keys = [key for key, _ in COLUMNS[report_type]]
    objects = [
        json.dumps(
            {k: _numeric(v) for k, v in zip(keys, row, strict=True)},
            indent=4,
            ensure_ascii=False,
        )
        for row in rows
    ]
    return "[" + ",".join(objects) + "]"


@handler("report_manager/fetchAll")
def reports_fetch(state: BlestaState, args: dict[str, Any]) -> Any:
    report_type = str(required(args, "type"))
    if report_type not in REPORTS:
        raise ApiError(400, errors={"type": {"valid": "Invalid report type."}})
    fmt = str(args.get("format", "csv"))
    if fmt not in FORMATS:
        raise ApiError(400, errors={"format": {"valid": "Invalid report format."}})
    vars_ = args.get("vars") if isinstance(args.get("vars"), dict) else {}
    assert isinstance(vars_, dict)
    start = _date(vars_.get("start_date", ""), "start_date")
    _date(vars_.get("end_date", ""), "end_date")
    rows = report_rows(state, report_type, start)
    text = _csv(state, report_type, rows) if fmt == "csv" else _json(report_type, rows)
    return web.Response(
        body=text.encode("utf-8"),
        content_type=f"text/{fmt}",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="report-{report_type}-'
            f'{start.isoformat()}.{fmt}"'
        },
    )
