"""A simulated Blesta Reseller API, faithful to upstream-apis.md §2.

`/plugin/blesta_reseller/v2/index/{method}.json` with HTTP Basic, Blesta's envelope and status
codes (400/401/403/404/415/500/503). Licence fields come as `vars[...]`, read where PHP reads
them; `search` pages with `vars[page]` (a plain `page` is ignored, as upstream, so a client that
sends it sees page 1 forever) at `page_size` rows (25) and never lists cancelled licences.
`addlicense` with `vars[test_mode]=true` returns a key without storing or charging.

A licence is known by one key, as upstream: the key `addlicense` returns is the
`fields.license_module_key` that `search` lists, and the one `cancellicense`/`suspendlicense`/
`unsuspendlicense`/`update` take as `vars[license]` — so a key taken from synced data works.
Search pages come from an indexed view (`daemon.sandbox.listing`); a test that changes a licence
in place should call `licenses.reindex(licence)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from daemon.sandbox import demo_data as dd
from daemon.sandbox.blesta_php import (
    ApiError,
    basic_credentials,
    error_response,
    request_args,
    truthy,
)
from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.listing import Query, Table

BASE_PATH = "/plugin/blesta_reseller/v2/index"
NOT_CALLABLE = {"preaction", "index"}


def key_of(licence: dict[str, Any]) -> str:
    """A licence's one key: what `addlicense` returned and `vars[license]` names."""
    return str(licence["fields"]["license_module_key"])


@dataclass
class ResellerState:
    """The simulated reseller account; tests read and mutate it directly."""

    users: dict[str, str] = field(default_factory=lambda: {"reseller": "demo-reseller-pass"})
    credit: float = 500.0
    packages: list[dict[str, Any]] = field(default_factory=list)
    licenses: Table = field(default_factory=Table)  # in order of purchase
    seed: int = 0
    page_size: int = 25
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    maintenance: bool = False
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    _by_key: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def demo(cls, licenses: int = 30, seed: int = 0, **kw: Any) -> ResellerState:
        state = cls(seed=seed, **kw)
        state.packages = [
            {
                "id": str(p),
                "name": name,
                "description": f"{name} licence",
                "description_html": f"<p>{name} licence</p>",
                "qty": None,
                "id_code": f"RES{p}",
                "pricing": [
                    {
                        "id": str(p * 10 + t),
                        "term": term,
                        "period": period,
                        "price": price,
                        "setup_fee": "0.0000",
                        "cancel_fee": "0.0000",
                        "currency": "USD",
                    }
                    for t, (term, period, price) in enumerate(
                        (("1", "month", "12.9500"), ("1", "year", "129.0000")), start=1
                    )
                ],
            }
            for p, name in ((1, "Blesta Owned"), (2, "Blesta Monthly"))
        ]
        for i in range(1, licenses + 1):
            state.add_license(pricing_id=str(11 + (i % 2) * 10), index=i)
        return state

    def pricing(self, pricing_id: str) -> dict[str, Any] | None:
        for pkg in self.packages:
            for row in pkg["pricing"]:
                if row["id"] == pricing_id:
                    return dict(row)
        return None

    def add_license(self, pricing_id: str, index: int | None = None) -> dict[str, Any]:
        i = index if index is not None else len(self.licenses) + 1
        r = dd.rng(i, self.seed, "licence")
        price = self.pricing(pricing_id) or {"term": "1", "period": "month"}
        added = dd.timestamp(i, self.seed)
        row = {
            "status": "active",
            "date_added": dd.blesta_time(added),
            "date_renews": dd.blesta_time(_a_year_after(added)),
            "date_suspended": None,
            "date_canceled": None,
            "pricing_id": pricing_id,
            "term": price["term"],
            "period": price["period"],
            "fields": {
                "license_module_key": f"{r.getrandbits(64):016x}",
                "license_module_domains": [f"billing{i}.example.com"],
                "license_module_ips": [f"192.0.2.{i % 250 + 1}"],
                "license_module_paths": [f"/home/site{i}/public_html/blesta/"],
                "license_module_reissue_status": None,
            },
        }
        self.licenses.append(row)
        self._by_key[key_of(row)] = row
        return row

    def __post_init__(self) -> None:
        if not isinstance(self.licenses, Table):
            self.licenses = Table(self.licenses)
        self._by_key.update((key_of(lic), lic) for lic in self.licenses)

    def find(self, key: str) -> dict[str, Any] | None:
        """The licence whose key (`fields.license_module_key`) is `key`."""
        lic = self._by_key.get(key)
        if lic is not None and lic in self.licenses:
            return lic
        # a licence a test appended directly is not in the key index yet
        return next((lic for lic in self.licenses if key_of(lic) == key), None)


def _a_year_after(when: datetime) -> datetime:
    try:
        return when.replace(year=when.year + 1)
    except ValueError:  # 29 February
        return when.replace(year=when.year + 1, day=28)


def _vars(args: dict[str, Any]) -> dict[str, Any]:
    v = args.get("vars")
    return v if isinstance(v, dict) else {}


def _licence(state: ResellerState, args: dict[str, Any]) -> dict[str, Any]:
    key = _vars(args).get("license")
    if key is None:
        raise ApiError(500, response="Failed to retrieve the default value")
    lic = state.find(str(key))
    if lic is None:
        raise ApiError(400, errors={"license": {"valid": "The license could not be found."}})
    return lic


def _status_change(status: str) -> Callable[[ResellerState, dict[str, Any]], Any]:
    def change(state: ResellerState, args: dict[str, Any]) -> Any:
        lic = _licence(state, args)
        if truthy(_vars(args).get("test_mode", "false")):
            return True
        lic["status"] = status
        when = "date_canceled" if status == "canceled" else "date_suspended"
        if status != "active":
            lic[when] = "2025-01-01 00:00:00"
        else:
            lic["date_suspended"] = None
        state.licenses.reindex(lic)  # a cancelled licence leaves the search listing
        return True

    return change


def _add(state: ResellerState, args: dict[str, Any]) -> Any:
    vars_ = _vars(args)
    if "pricing_id" not in vars_:
        raise ApiError(500, response="Failed to retrieve the default value")
    price = state.pricing(str(vars_["pricing_id"]))
    if price is None:
        raise ApiError(400, errors={"pricing_id": {"valid": "Invalid pricing ID."}})
    if truthy(vars_.get("test_mode", "false")):
        return f"TEST{dd.rng(len(state.licenses), state.seed, 'test').getrandbits(48):012x}"
    cost = float(price["price"])
    if cost > state.credit:
        raise ApiError(400, errors={"credit": {"insufficient": "Insufficient account credit."}})
    state.credit = round(state.credit - cost, 2)
    return key_of(state.add_license(str(vars_["pricing_id"])))


def _update(state: ResellerState, args: dict[str, Any]) -> Any:
    lic = _licence(state, args)
    if _vars(args).get("reissue_status") == "reissue":
        lic["fields"]["license_module_reissue_status"] = "reissue"
    return True


def _pricing(state: ResellerState, args: dict[str, Any]) -> Any:
    if "package_id" not in args:
        raise ApiError(500, response="Failed to retrieve the default value")
    for pkg in state.packages:
        if pkg["id"] == str(args["package_id"]):
            return [dict(p) for p in pkg["pricing"]]
    raise ApiError(400, errors={"package_id": {"valid": "Invalid package ID."}})


def _search(state: ResellerState, args: dict[str, Any]) -> Any:
    vars_ = _vars(args)
    term = str(vars_.get("search", "")).lower()
    try:
        page = max(1, int(vars_.get("page", 1)))
    except (TypeError, ValueError):
        page = 1

    def listed(lic: dict[str, Any]) -> bool:
        return lic["status"] != "canceled" and (not term or term in _haystack(lic))

    rows = state.licenses.select(Query(extra=("search", term), test=listed))
    start = (page - 1) * state.page_size
    return [dict(r) for r in rows[start : start + state.page_size]]


def _haystack(lic: dict[str, Any]) -> str:
    f = lic["fields"]
    parts = [
        key_of(lic),
        *f["license_module_domains"],
        *f["license_module_ips"],
        *f["license_module_paths"],
    ]
    return " ".join(parts).lower()


METHODS: dict[str, Callable[[ResellerState, dict[str, Any]], Any]] = {
    "getcredit": lambda s, a: s.credit,
    "getpackages": lambda s, a: [dict(p) for p in s.packages],
    "getpackagepricing": _pricing,
    "addlicense": _add,
    "cancellicense": _status_change("canceled"),
    "suspendlicense": _status_change("suspended"),
    "unsuspendlicense": _status_change("active"),
    "update": _update,
    "search": _search,
}


def make_app(state: ResellerState) -> web.Application:
    """The simulator; the client's base url is `serve_app(...)` + `BASE_PATH`."""
    app = web.Application(middlewares=[fault_middleware(state.faults, state.stats)])

    async def handle(request: web.Request) -> web.StreamResponse:
        name, dot, fmt = request.match_info["tail"].rpartition(".")
        if not dot or fmt != "json":
            return error_response(415)
        creds = basic_credentials(request)
        if creds is None or not creds[1] or state.users.get(creds[0]) != creds[1]:
            return error_response(401)
        if state.maintenance:
            return error_response(503)
        args = await request_args(request)
        state.calls.append((request.method, name, args))
        method = name.lower()  # PHP method names are case-insensitive (getCredit == getcredit)
        if method in NOT_CALLABLE:
            return error_response(403)
        fn = METHODS.get(method)
        if fn is None:
            return error_response(404)
        try:
            return web.json_response({"response": fn(state, args)})
        except ApiError as exc:
            return error_response(exc.status, errors=exc.errors, response=exc.response)

    app.router.add_route("*", BASE_PATH + "/{tail:.*}", handle)
    return app
