"""Memory: peak RSS of a full sync of 10,000 vs 100,000 Blesta clients (ours).

Pages stream through the runner into the store, so peak memory should not grow with the
upstream's size. Target: the 100,000 run stays under 150 MB and within 25% of the 10,000 run.
"""

from __future__ import annotations

import argparse

from common import blesta_server, worker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args()
    rss = {}
    for n in (a.small, a.large):
        with blesta_server(n, 0.0) as url:
            r = worker("ours", url, concurrency=a.concurrency)
            assert r["fetched"] == n, r
            rss[n] = r["peak_rss_mb"]
            print(f"{n:>8} records: peak RSS {r['peak_rss_mb']:.1f} MB, {r['seconds']:.1f} s")
    ratio = rss[a.large] / rss[a.small]
    print(
        f"large/small peak RSS: {ratio:.2f}x (target <= 1.25x); "
        f"large {rss[a.large]:.1f} MB (target < 150 MB)"
    )


if __name__ == "__main__":
    main()
