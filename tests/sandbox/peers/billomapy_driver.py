"""billomapy 2.5.3 against the Billomat simulator (see the package docstring).

billomapy builds `https://{id}.billomat.net/api/`; its base URL is a plain attribute, so the
driver points it at the simulator, as a user testing against a proxy would.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from billomapy import Billomapy


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    bm = Billomapy(cfg["billomat_id"], cfg["api_key"], cfg["app_id"], cfg["app_secret"])
    bm.api_url = cfg["url"].rstrip("/") + "/"
    pages = bm.get_all_clients()
    clients = bm.resolve_response_data("clients", "client", pages)
    created = bm.create_client({"client": {"name": "Peer GmbH", "email": "peer@example.de"}})
    new_id = created["client"]["id"]
    updated = bm.update_client(new_id, {"client": {"name": "Peer AG"}})
    fetched = bm.get_client(new_id)
    deleted = bm.delete_client(new_id)  # an empty 200: billomapy returns the response itself
    try:
        bm.get_client(new_id)
        gone = None
    except Exception as exc:  # requests' HTTPError; its class differs across requests versions
        gone = getattr(getattr(exc, "response", None), "status_code", None)
    march = bm.resolve_response_data(
        "invoices",
        "invoice",
        bm.get_all_invoices(params={"from": "2025-03-01", "to": "2025-03-31"}),
    )
    return {
        "pages": [[p["clients"][k] for k in ("@page", "@per_page", "@total")] for p in pages],
        "client_ids": [c["id"] for c in clients],
        "client_5": bm.get_client(5)["client"],
        "created": created["client"],
        "updated_name": updated["client"]["name"],
        "fetched_name": fetched["client"]["name"],
        "deleted_status": deleted.status_code,
        "gone_status": gone,
        "march_dates": sorted({i["date"] for i in march}),
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
