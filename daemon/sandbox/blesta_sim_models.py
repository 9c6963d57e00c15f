"""Model methods of the simulated Blesta (`clients/getList`, `report_manager/fetchAll`, ...).

Each handler takes `(state, args)` with args as PHP would bind them and returns the value for
the `response` envelope (or a ready `web.Response` for report files), raising `ApiError` for
Blesta's error answers. Values are strings, as PHP/PDO returns them.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.sandbox import demo_data as dd
from daemon.sandbox.blesta_php import ApiError

if TYPE_CHECKING:
    from daemon.sandbox.blesta_sim import BlestaState

Handler = Callable[["BlestaState", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}
NOT_CALLABLE = {"clients/validateCustomFields", "report_manager/makeTemporaryFile"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
REPORTS = {"package_revenue": "Package Revenue", "tax_liability": "Tax Liability"}
# Report cells that break naive CSV parsers: a comma, doubled quotes, an embedded newline.
TRICKY_PACKAGES = ('Hosting, "Pro" Plan', "VoIP\nTrunk", "Plain Package", 'Quote "only"')


def handler(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return deco


def required(args: dict[str, Any], name: str) -> Any:
    """A missing required parameter fails PHP reflection: 500, not 400 (upstream-apis §1)."""
    if name not in args:
        raise ApiError(500, response="Failed to retrieve the default value")
    return args[name]


# -- demo data --------------------------------------------------------------------------------


def populate(state: BlestaState, clients: int) -> None:
    seed = state.seed
    for p in range(1, 6):
        state.packages.append(
            {
                "id": str(p),
                "id_code": f"PKG{p:03d}",
                "name": TRICKY_PACKAGES[(p - 1) % len(TRICKY_PACKAGES)],
                "status": "inactive" if p == 5 else "active",
                "module_id": "1",
                "company_id": "1",
            }
        )
    for i in range(1, clients + 1):
        person = dd.fake_person(i, seed)
        r = dd.rng(i, seed, "blesta")
        status = "inactive" if i % 7 == 0 else ("fraud" if i % 29 == 0 else "active")
        client = new_client(
            state,
            {
                "first_name": person.first_name,
                "last_name": person.last_name,
                "email": person.email,
                "company": person.company,
                "phone": person.display_phone,
                "status": status,
                "date_added": dd.blesta_time(dd.timestamp(i, seed)),
            },
        )
        cid = client["id"]
        for n in range(1 + (i % 3 == 0)):
            inv_id = str(len(state.invoices) + 1)
            billed = dd.timestamp(i + n * 30, seed)
            closed = r.random() < 0.5
            state.invoices.append(
                {
                    "id": inv_id,
                    "id_code": f"INV{int(inv_id):05d}",
                    "client_id": cid,
                    "currency": "USD",
                    "subtotal": f"{r.randrange(1000, 50000) / 100:.2f}",
                    "total": f"{r.randrange(1000, 50000) / 100:.2f}",
                    "paid": "0.0000",
                    "status": "void" if n == 1 and i % 5 == 0 else "active",
                    "date_billed": dd.blesta_time(billed),
                    "date_due": dd.blesta_time(billed + timedelta(days=14)),
                    "date_closed": dd.blesta_time(billed + timedelta(days=3)) if closed else None,
                }
            )
        state.services.append(
            {
                "id": str(len(state.services) + 1),
                "client_id": cid,
                "pricing_id": str(1 + i % 5),
                "package_name": state.packages[i % 5]["name"],
                "status": ("active", "active", "suspended", "canceled", "pending")[i % 5],
                "date_added": client["date_added"],
                "date_renews": dd.blesta_time(dd.timestamp(i + 365, seed)),
            }
        )
        state.transactions.append(
            {
                "id": str(len(state.transactions) + 1),
                "client_id": cid,
                "amount": f"{r.randrange(500, 20000) / 100:.2f}",
                "currency": "USD",
                "type": ("cc", "ach", "other")[i % 3],
                "status": "declined" if i % 6 == 0 else "approved",
                "transaction_id": f"txn_{seed}_{i:06d}",
                "date_added": dd.blesta_time(dd.timestamp(i + 2, seed)),
            }
        )


def new_client(state: BlestaState, fields: dict[str, Any]) -> dict[str, Any]:
    cid = state.next_id(state.clients)
    row = {
        "id": str(cid),
        "id_code": str(1500 + cid),
        "user_id": str(cid),
        "client_group_id": "1",
        "status": "active",
        "first_name": "",
        "last_name": "",
        "company": None,
        "email": "",
        "phone": None,
        "contact_id": None,
        "date_added": dd.blesta_time(dd.timestamp(cid, state.seed)),
        **fields,
    }
    contact_id = str(state.next_id(state.contacts))
    row["contact_id"] = contact_id
    state.clients.append(row)
    contacts = [("primary", row["first_name"], row["last_name"], row["email"])]
    if cid % 4 == 0:
        contacts.append(("billing", "Accounts", row["last_name"], f"billing{cid}@example.com"))
    for kind, first, last, mail in contacts:
        ct_id = str(state.next_id(state.contacts))
        state.contacts.append(
            {
                "id": ct_id,
                "client_id": str(cid),
                "contact_type": kind,
                "first_name": first,
                "last_name": last,
                "email": mail,
                "company": row["company"],
                "date_added": row["date_added"],
            }
        )
        if row.get("phone"):
            state.numbers.append(
                {
                    "id": str(state.next_id(state.numbers)),
                    "contact_id": ct_id,
                    "number": row["phone"] if kind == "primary" else dd.phone(cid + 5000),
                    "type": "phone",
                    "location": "work" if kind == "primary" else "mobile",
                }
            )
    return row


# -- lists --------------------------------------------------------------------------------------


def page_of(
    state: BlestaState, name: str, rows: list[dict[str, Any]], args: dict[str, Any]
) -> list[dict[str, Any]]:
    for key, wanted in (args.get("filters") or {}).items():
        if isinstance(wanted, str):
            rows = [r for r in rows if key not in r or str(r[key]) == wanted]
    order = args.get("order_by") or args.get("order")
    if isinstance(order, dict):
        for key, direction in reversed(list(order.items())):
            rows = sorted(rows, key=lambda r: _sort_key(r.get(key)))
            if str(direction).upper() == "DESC":
                rows.reverse()
    try:
        page = max(1, int(args.get("page", 1)))
    except (TypeError, ValueError):
        page = 1
    if state.ignore_page:
        page = 1
    if page in state.fail_pages:
        raise ApiError(500, response=f"simulated failure on page {page}")
    start = (page - 1) * state.page_size
    result = [dict(r) for r in rows[start : start + state.page_size]]
    if state.after_page is not None:
        state.after_page(name, page)
    return result


def _sort_key(value: Any) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value or ""))


def by_status(rows: list[dict[str, Any]], status: Any) -> list[dict[str, Any]]:
    if status in (None, "", "all"):
        return rows
    return [r for r in rows if r["status"] == status]


def by_client(rows: list[dict[str, Any]], args: dict[str, Any]) -> list[dict[str, Any]]:
    cid = args.get("client_id")
    return rows if cid in (None, "") else [r for r in rows if r["client_id"] == str(cid)]


def invoice_rows(state: BlestaState, args: dict[str, Any]) -> list[dict[str, Any]]:
    status = args.get("status", "open")  # Blesta's default narrows to open invoices
    cutoff = "2023-06-01 00:00:00"  # the sim's fixed "today" for past-due invoices
    rows = by_client(state.invoices, args)
    if status == "all":
        return rows
    if status == "open":
        return [r for r in rows if r["status"] == "active" and r["date_closed"] is None]
    if status == "closed":
        return [r for r in rows if r["status"] == "active" and r["date_closed"] is not None]
    if status == "past_due":
        return [r for r in rows if r["date_closed"] is None and r["date_due"] < cutoff]
    return by_status(rows, status)


LISTS: dict[str, Callable[[BlestaState, dict[str, Any]], list[dict[str, Any]]]] = {
    "clients": lambda s, a: by_status(s.clients, a.get("status")),
    "invoices": invoice_rows,
    "services": lambda s, a: by_status(by_client(s.services, a), a.get("status", "active")),
    "transactions": lambda s, a: by_status(
        by_client(s.transactions, a), a.get("status", "approved")
    ),
    "packages": lambda s, a: by_status(s.packages, a.get("status")),
    "contacts": lambda s, a: [r for r in s.contacts if r["client_id"] == str(a["client_id"])],
}


def _register_lists() -> None:
    for model in LISTS:

        def get_list(state: BlestaState, args: dict[str, Any], m: str = model) -> Any:
            if m == "contacts":
                required(args, "client_id")
            return page_of(state, m, LISTS[m](state, args), args)

        def get_count(state: BlestaState, args: dict[str, Any], m: str = model) -> Any:
            if m == "contacts":
                required(args, "client_id")
            return len(LISTS[m](state, args))

        HANDLERS[f"{model}/getList"] = get_list
        HANDLERS[f"{model}/getListCount"] = get_count


_register_lists()


# -- single records and writes ----------------------------------------------------------------


def _find(rows: list[dict[str, Any]], ident: Any) -> dict[str, Any] | None:
    return next((r for r in rows if r["id"] == str(ident)), None)


@handler("clients/get")
def clients_get(state: BlestaState, args: dict[str, Any]) -> Any:
    row = _find(state.clients, required(args, "client_id"))
    return dict(row) if row else False


@handler("contacts/getNumbers")
def contacts_numbers(state: BlestaState, args: dict[str, Any]) -> Any:
    cid = str(required(args, "contact_id"))
    return [dict(n) for n in state.numbers if n["contact_id"] == cid]


def _validate_client(vars_: dict[str, Any], *, partial: bool) -> dict[str, dict[str, str]]:
    errors: dict[str, dict[str, str]] = {}
    for name, label in (("first_name", "a first name"), ("last_name", "a last name")):
        if (not partial or name in vars_) and not str(vars_.get(name, "")).strip():
            errors[name] = {"empty": f"Please enter {label}."}
    if not partial or "email" in vars_:
        if not EMAIL.match(str(vars_.get("email", ""))):
            errors["email"] = {"format": "Please enter a valid email address."}
    return errors


@handler("clients/add")
def clients_add(state: BlestaState, args: dict[str, Any]) -> Any:
    vars_ = args.get("vars") if isinstance(args.get("vars"), dict) else {}
    assert isinstance(vars_, dict)
    errors = _validate_client(vars_, partial=False)
    if errors:
        raise ApiError(400, errors=errors)
    allowed = ("first_name", "last_name", "email", "company", "phone", "status")
    return new_client(state, {k: str(vars_[k]) for k in allowed if k in vars_})["id"]


@handler("clients/edit")
def clients_edit(state: BlestaState, args: dict[str, Any]) -> Any:
    row = _find(state.clients, required(args, "client_id"))
    if row is None:
        raise ApiError(400, errors={"client_id": {"exists": "Invalid client ID."}})
    vars_ = args.get("vars") if isinstance(args.get("vars"), dict) else {}
    assert isinstance(vars_, dict)
    errors = _validate_client(vars_, partial=True)
    if errors:
        raise ApiError(400, errors=errors)
    row.update({k: str(v) for k, v in vars_.items() if k in row and k != "id"})
    return dict(row)


@handler("clients/delete")
def clients_delete(state: BlestaState, args: dict[str, Any]) -> Any:
    row = _find(state.clients, required(args, "client_id"))
    if row is None:
        raise ApiError(400, errors={"client_id": {"exists": "Invalid client ID."}})
    state.clients.remove(row)
    return None


# -- reports ------------------------------------------------------------------------------------


@handler("report_manager/getAvailable")
def reports_available(state: BlestaState, args: dict[str, Any]) -> Any:
    return dict(REPORTS)


def _date(value: Any, name: str) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ApiError(400, errors={name: {"format": f"Please enter a valid {name}."}}) from None


def report_rows(state: BlestaState, report_type: str, start: date) -> list[list[str]]:
    period = f"{start.year:04d}-{start.month:02d}"
    if report_type == "package_revenue":
        rows = [["Package", "Revenue", "Currency", "Period"]]
        for p in state.packages:
            r = dd.rng(int(p["id"]), state.seed, f"rev:{period}")
            rows.append([p["name"], f"{r.randrange(0, 900000) / 100:.2f}", "USD", period])
        return rows
    rows = [["Invoice", "Tax Name", "Tax Amount", "Currency"]]
    for inv in state.invoices[:10]:
        r = dd.rng(int(inv["id"]), state.seed, f"tax:{period}")
        rows.append([inv["id_code"], 'Sales Tax "NY"', f"{r.randrange(0, 5000) / 100:.2f}", "USD"])
    return rows


@handler("report_manager/fetchAll")
def reports_fetch(state: BlestaState, args: dict[str, Any]) -> Any:
    report_type = str(required(args, "type"))
    if report_type not in REPORTS:
        raise ApiError(400, errors={"type": {"valid": "Invalid report type."}})
    fmt = str(args.get("format", "csv"))
    if fmt != "csv":
        raise ApiError(400, errors={"format": {"valid": "Invalid report format."}})
    vars_ = args.get("vars") if isinstance(args.get("vars"), dict) else {}
    assert isinstance(vars_, dict)
    start = _date(vars_.get("start_date", ""), "start_date")
    _date(vars_.get("end_date", ""), "end_date")
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(
        report_rows(state, report_type, start)
    )
    text = ("\ufeff" if state.report_bom else "") + buf.getvalue()
    return web.Response(
        body=text.encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="report-{report_type}-'
            f'{start.isoformat()}.csv"'
        },
    )
