"""halopsa 2.0.2: `Tickets.search(pageinate=True)` page by page, then one executemany.

halopsa builds `https://{tenant}.halopsa.com` and asks for a token in its constructor, so the
host is redirected to the simulator at the `requests` layer first (as the fidelity driver in
tests/sandbox/peers does); every request is otherwise the library's own. The page size is
halopsa's default (50).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import requests
from _store import write  # beside this script
from HaloPSA.Halo import Halo

_send = requests.Session.request


def redirect(public: str, sim: str) -> None:
    def request(self: requests.Session, method: str, url: str, *args: Any, **kw: Any) -> Any:
        if url.startswith(public):
            url = sim + url[len(public) :]
        return _send(self, method, url, *args, **kw)

    requests.Session.request = request  # type: ignore[method-assign]


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    redirect(f"https://{cfg['tenant']}.halopsa.com", cfg["url"].rstrip("/"))
    halo = Halo(cfg["tenant"], cfg["client_id"], cfg["client_secret"])
    page = halo.Tickets.search(pageinate=True, page_no=1)
    tickets = list(page["tickets"])
    while page["tickets"] and len(tickets) < page["record_count"]:
        page = halo.Tickets.search(pageinate=True, page_no=page["page_no"] + 1)
        tickets.extend(page["tickets"])
    write(cfg["db"], "tickets", tickets)
    print(json.dumps({"fetched": len(tickets)}))
