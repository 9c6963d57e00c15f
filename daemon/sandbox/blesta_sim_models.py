"""Model methods of the simulated Blesta: the handler registry, demo data, records and writes.

Each handler takes `(state, args)` with args as PHP would bind them and returns the value for
the `response` envelope (or a ready `web.Response` for report files), raising `ApiError` for
Blesta's error answers. Values are strings, as PHP/PDO returns them. List and count methods
live in `blesta_lists`, reports in `blesta_reports`; both register into `HANDLERS` here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from daemon.sandbox import demo_data as dd
from daemon.sandbox.blesta_php import ApiError
from daemon.sandbox.listing import Query

if TYPE_CHECKING:
    from daemon.sandbox.blesta_sim import BlestaState
    from daemon.sandbox.listing import Table

Handler = Callable[["BlestaState", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}
NOT_CALLABLE = {"clients/validateCustomFields", "report_manager/makeTemporaryFile"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
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
            inv_id = str(state.invoices.next_id())
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
                "id": str(state.services.next_id()),
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
                "id": str(state.transactions.next_id()),
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


# -- single records and writes ----------------------------------------------------------------


def find(rows: Table, ident: Any) -> dict[str, Any] | None:
    """A row by id (O(1)); ids that are not integers find nothing, as in MySQL."""
    try:
        return rows.get(int(str(ident)))
    except ValueError:
        return None


def _getter(model: str, arg: str) -> Handler:
    def get(state: BlestaState, args: dict[str, Any]) -> Any:
        row = find(getattr(state, model), required(args, arg))
        return dict(row) if row else False  # Blesta answers `false` for a missing id

    return get


for _model, _arg in (
    ("clients", "client_id"),
    ("contacts", "contact_id"),
    ("invoices", "invoice_id"),
    ("services", "service_id"),
    ("transactions", "transaction_id"),
    ("packages", "package_id"),
):
    HANDLERS[f"{_model}/get"] = _getter(_model, _arg)


@handler("contacts/getNumbers")
def contacts_numbers(state: BlestaState, args: dict[str, Any]) -> Any:
    cid = str(required(args, "contact_id"))
    return [dict(n) for n in state.numbers.select(Query(equal=(("contact_id", (cid,)),)))]


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
    row = find(state.clients, required(args, "client_id"))
    if row is None:
        raise ApiError(400, errors={"client_id": {"exists": "Invalid client ID."}})
    vars_ = args.get("vars") if isinstance(args.get("vars"), dict) else {}
    assert isinstance(vars_, dict)
    errors = _validate_client(vars_, partial=True)
    if errors:
        raise ApiError(400, errors=errors)
    row.update({k: str(v) for k, v in vars_.items() if k in row and k != "id"})
    state.clients.reindex(row)
    return dict(row)


@handler("clients/delete")
def clients_delete(state: BlestaState, args: dict[str, Any]) -> Any:
    row = find(state.clients, required(args, "client_id"))
    if row is None:
        raise ApiError(400, errors={"client_id": {"exists": "Invalid client ID."}})
    state.clients.remove(row)
    return None
