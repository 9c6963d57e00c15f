"""halopsa 2.0.2 against the Halo simulator (see the package docstring).

halopsa builds `https://{tenant}.halo{psa|itsm}.com` and asks for a token inside its
constructor, so the driver redirects that host to the simulator at the `requests` layer before
constructing it; every request the library makes is otherwise its own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import requests
from HaloPSA.Halo import Halo

_send = requests.Session.request


def redirect(public: str, sim: str) -> None:
    def request(self: requests.Session, method: str, url: str, *args: Any, **kw: Any) -> Any:
        if url.startswith(public):
            url = sim + url[len(public) :]
        return _send(self, method, url, *args, **kw)

    requests.Session.request = request  # type: ignore[method-assign]


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    redirect(f"https://{cfg['tenant']}.halopsa.com", cfg["url"].rstrip("/"))
    halo = Halo(cfg["tenant"], cfg["client_id"], cfg["client_secret"])
    first = halo.Tickets.search(pageinate=True, page_size=50, page_no=1)
    pages = [first]
    while sum(len(p["tickets"]) for p in pages) < first["record_count"]:
        pages.append(halo.Tickets.search(pageinate=True, page_size=50, page_no=len(pages) + 1))
    unpaged = halo.Tickets.search()  # without pageinate: `count` (50) records, no error
    ticket = halo.Tickets.get(7, includedetails=True)
    saved = halo.Tickets.update(id=7, summary="Edited by halopsa", status_id=2)
    open_only = halo.Tickets.search(open_only=True, count=1000)
    return {
        "record_count": first["record_count"],
        "page_sizes": [len(p["tickets"]) for p in pages],
        "ids": [t["id"] for p in pages for t in p["tickets"]],
        "unpaged": len(unpaged["tickets"]),
        "ticket_7": ticket,
        "saved": saved,
        "after": halo.Tickets.get(7)["summary"],
        "open_statuses": sorted({t["status_id"] for t in open_only["tickets"]}),
        "actions_of_3": [a["ticket_id"] for a in halo.Actions.search(ticket_id=3)["actions"]],
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
