"""Throughput: 20,000 Blesta clients at 20 ms per request into SQLite, ours vs blesta-sdk.

Both sides run against the same simulator process in the same run, alternating, each in a
fresh interpreter; the figure is the sync itself (fetch + write), medians of `--runs`.
Targets (issue: sync engine): ours >= 6x the peer with max_concurrency = 8, and within 1.3x of
the ideal bound pages x latency / concurrency. Also checks that an unchanged re-sync rewrites
no row.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from common import blesta_server, median, worker

PAGE_SIZE = 20  # the simulator's (and Blesta's default) results_per_page


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=20_000)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    pages = math.ceil(a.clients / PAGE_SIZE)
    ideal = pages * a.latency / a.concurrency
    ours_s: list[float] = []
    peer_s: list[float] = []
    with blesta_server(a.clients, a.latency) as url:
        for _ in range(a.runs):
            r = worker("ours", url, concurrency=a.concurrency)
            assert r["fetched"] == a.clients, r
            ours_s.append(r["seconds"])
            q = worker("peer", url)
            assert q["fetched"] == a.clients, q
            peer_s.append(q["seconds"])
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "resync.db"
            worker("ours", url, db, concurrency=a.concurrency)
            again = worker("ours", url, db, concurrency=a.concurrency)
    o, q = median(ours_s), median(peer_s)
    print(
        f"{a.clients} records, {pages} pages, {a.latency * 1000:.0f} ms/request, "
        f"max_concurrency={a.concurrency}, {a.runs} runs each (median)"
    )
    print(f"{'':24}{'seconds':>10}{'records/s':>12}")
    print(f"{'ours (daemon)':24}{o:>10.2f}{a.clients / o:>12.0f}")
    print(f"{'peer (blesta-sdk)':24}{q:>10.2f}{a.clients / q:>12.0f}")
    print(f"{'ideal bound':24}{ideal:>10.2f}{a.clients / ideal:>12.0f}")
    print(f"speed-up vs peer: {q / o:.1f}x (target >= 6x)")
    print(f"ours / ideal:     {o / ideal:.2f}x (target <= 1.3x)")
    rewritten = again["inserted"] + again["updated"]
    print(
        f"unchanged re-sync: {again['unchanged']} unchanged, {rewritten} rows rewritten (target 0)"
    )


if __name__ == "__main__":
    main()
