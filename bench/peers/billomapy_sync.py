"""billomapy 2.5.3: `get_all_clients()` (per_page 1000, its default), then one executemany.

billomapy builds `https://{id}.billomat.net/api/`; its base URL is a plain attribute, so it is
pointed at the simulator, as a user testing against a proxy would.
"""

from __future__ import annotations

import json
import sys

from _store import write  # beside this script
from billomapy import Billomapy

if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    bm = Billomapy(cfg["billomat_id"], cfg["api_key"], cfg["app_id"], cfg["app_secret"])
    bm.api_url = cfg["url"].rstrip("/") + "/"
    clients = bm.resolve_response_data("clients", "client", bm.get_all_clients())
    write(cfg["db"], "clients", clients)
    print(json.dumps({"fetched": len(clients)}))
