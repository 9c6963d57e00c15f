"""List and count methods of the simulated Blesta (`getList`, `getListCount`, `getStatusCount`,
`getAll`), answered from indexed views (`daemon.sandbox.listing`).

Each method narrows exactly as Blesta does (invoices `open`, services `active`, transactions
`approved` by default; clients and packages all), takes `filters[...]` and `order_by[...]`, and
pages at the server's `page_size`. The listing of a request is a cacheable `Query`, so page N of
a 100k-client list costs a slice, and its count is the view's length. Signatures follow the
Blesta API schema (sdk-py `blesta_api_schema.json`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from daemon.sandbox.blesta_php import ApiError
from daemon.sandbox.blesta_sim_models import HANDLERS, required
from daemon.sandbox.listing import Query, Table

if TYPE_CHECKING:
    from daemon.sandbox.blesta_sim import BlestaState

Record = dict[str, Any]
PAST_DUE_CUTOFF = "2023-06-01 00:00:00"  # the simulator's fixed "today" for past-due invoices
DEFAULT_STATUS = {"invoices": "open", "services": "active", "transactions": "approved"}


def _invoice_status(status: str) -> Callable[[Record], bool] | None:
    if status == "open":
        return lambda r: r["status"] == "active" and r["date_closed"] is None
    if status == "closed":
        return lambda r: r["status"] == "active" and r["date_closed"] is not None
    if status == "past_due":
        return lambda r: r["date_closed"] is None and r["date_due"] < PAST_DUE_CUTOFF
    return None


def _filters(args: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    given = args.get("filters")
    if not isinstance(given, dict):
        return ()
    return tuple(sorted((k, v) for k, v in given.items() if isinstance(v, str)))


def _order(args: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
    given = args.get("order_by") or args.get("order")
    if not isinstance(given, dict):
        return ()
    return tuple((k, str(v).upper() == "DESC") for k, v in given.items())


def list_query(model: str, args: dict[str, Any], *, status: Any = None) -> Query:
    """The records a list/count call selects. `status` overrides the argument (getStatusCount
    defaults differ from getList's)."""
    if status is None:
        status = args.get("status", DEFAULT_STATUS.get(model))
    status = None if status in (None, "", "all") else str(status)
    equal: list[tuple[str, tuple[str, ...]]] = []
    client_id = args.get("client_id")
    if model in ("invoices", "services", "transactions", "contacts") and client_id not in (
        None,
        "",
    ):
        equal.append(("client_id", (str(client_id),)))
    by_status = _invoice_status(status) if model == "invoices" and status else None
    if status and by_status is None and model != "contacts":
        equal.append(("status", (status,)))
    filters = _filters(args)

    def test(rec: Record) -> bool:
        # Blesta ignores a filter on a column the row lacks
        if any(k in rec and str(rec[k]) != v for k, v in filters):
            return False
        return by_status is None or by_status(rec)

    needs_test = bool(filters) or by_status is not None
    return Query(
        equal=tuple(equal),
        order=_order(args),
        extra=(status if by_status else None, filters) if needs_test else None,
        test=test if needs_test else None,
    )


def table_of(state: BlestaState, model: str) -> Table:
    table = getattr(state, model)
    assert isinstance(table, Table)
    return table


def rows_for(state: BlestaState, model: str, args: dict[str, Any]) -> Sequence[Record]:
    if model == "contacts":
        required(args, "client_id")
    return table_of(state, model).select(list_query(model, args))


def page_of(state: BlestaState, model: str, args: dict[str, Any]) -> list[Record]:
    """One page of a list method, with the test hooks (`fail_pages`, `ignore_page`,
    `after_page`) applied."""
    rows = rows_for(state, model, args)
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
        state.after_page(model, page)
    return result


def _register(model: str) -> None:
    def get_list(state: BlestaState, args: dict[str, Any]) -> Any:
        return page_of(state, model, args)

    def get_count(state: BlestaState, args: dict[str, Any]) -> Any:
        return len(rows_for(state, model, args))

    HANDLERS[f"{model}/getList"] = get_list
    HANDLERS[f"{model}/getListCount"] = get_count


for _model in ("clients", "invoices", "services", "transactions", "packages", "contacts"):
    _register(_model)


# -- getStatusCount: the count of one status (defaults per model, as in Blesta) ---------------


def _status_count(model: str, default: str, *, client_required: bool = False) -> None:
    def count(state: BlestaState, args: dict[str, Any]) -> Any:
        if client_required:
            required(args, "client_id")
        status = args.get("status") or default
        return len(table_of(state, model).select(list_query(model, args, status=status)))

    HANDLERS[f"{model}/getStatusCount"] = count


_status_count("clients", "active")
_status_count("invoices", "open")
_status_count("services", "active", client_required=True)
_status_count("transactions", "approved")


# -- getAll: unpaged lists ---------------------------------------------------------------------


def packages_get_all(state: BlestaState, args: dict[str, Any]) -> Any:
    """`packages/getAll(company_id, order=['name'=>'ASC'], status=null, type=null, filters)`."""
    company = str(required(args, "company_id"))
    order = _order({"order": args.get("order") or {"name": "ASC"}})
    query = list_query("packages", {**args, "order_by": None})
    rows = table_of(state, "packages").select(
        Query(query.equal, order, ("company", company, query.extra), _and_company(query, company))
    )
    return [dict(r) for r in rows]


def _and_company(query: Query, company: str) -> Callable[[Record], bool]:
    def test(rec: Record) -> bool:
        return str(rec.get("company_id")) == company and (query.test is None or query.test(rec))

    return test


def clients_get_all(state: BlestaState, args: dict[str, Any]) -> Any:
    """`clients/getAll(status=null, client_group_id=null)`: every client, unpaged."""
    query = list_query("clients", {"status": args.get("status")})
    group = args.get("client_group_id")
    if group not in (None, ""):
        query = Query((*query.equal, ("client_group_id", (str(group),))), query.order)
    return [dict(r) for r in table_of(state, "clients").select(query)]


HANDLERS["packages/getAll"] = packages_get_all
HANDLERS["clients/getAll"] = clients_get_all
