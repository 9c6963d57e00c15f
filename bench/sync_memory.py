"""Memory: peak RSS of `daemon run-once` syncing 10,000 vs 100,000 records (Blesta, Halo).

    python -m bench.sync_memory [--small 10000] [--large 100000] [--only blesta,halo]

Pages stream through the runner into the store, so peak memory should not grow with the
upstream's size. Each run is the whole `daemon run-once JOB` process against a simulator in its
own process (no added latency), into a fresh database; the figure is the process's peak RSS as
the operating system accounted it. Targets (issue 18): the large run stays under 150 MB and
within 1.25x of the small one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (`cd bench; python sync_memory.py`): find the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import simulators
from bench.sync_peers import run_ours

TARGET_RATIO, TARGET_MB = 1.25, 150.0


def measure(upstream: str, small: int, large: int) -> dict[str, Any]:
    out: dict[str, Any] = {"upstream": upstream, "small": small, "large": large}
    for label, n in (("small", small), ("large", large)):
        with simulators(**{upstream: n}, latency=0.0) as sim, tempfile.TemporaryDirectory() as d:
            t, job = run_ours(upstream, sim, Path(d))
        out[f"{label}_rss_mb"] = t.peak_rss_mb
        out[f"{label}_s"] = t.wall
        out[f"{label}_sync_s"] = job["duration_s"]
    out["ratio"] = out["large_rss_mb"] / out["small_rss_mb"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--only", default="blesta,halo")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    for upstream in a.only.split(","):
        r = measure(upstream, a.small, a.large)
        if a.json:
            print(json.dumps(r), flush=True)
            continue
        for label in ("small", "large"):
            print(f"{upstream:<7}{r[label]:>8} records: peak RSS {r[label + '_rss_mb']:.1f} MB, "
                  f"{r[label + '_s']:.1f} s whole process")  # fmt: skip
        print(f"{upstream:<7}large/small peak RSS: {r['ratio']:.2f}x (target <= {TARGET_RATIO}x); "
              f"large {r['large_rss_mb']:.1f} MB (target < {TARGET_MB:g} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
