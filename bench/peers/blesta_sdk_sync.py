"""blesta-sdk 0.6.0: `BlestaRequest.get_all("clients", "getList")`, then one executemany."""

from __future__ import annotations

import json
import sys

from _store import write  # beside this script
from blesta_sdk import BlestaRequest

if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    with BlestaRequest(cfg["url"], cfg["user"], cfg["key"]) as api:
        records = api.get_all("clients", "getList", {}, on_error="raise")
    write(cfg["db"], "clients", records)
    print(json.dumps({"fetched": len(records)}))
