"""Helpers shared by the benchmark drivers: a simulator subprocess and worker runs."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def blesta_server(clients: int, latency: float) -> Iterator[str]:
    """Start bench/blesta_server.py; yields its API URL; kills it afterwards."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "blesta_server.py"),
            "--clients",
            str(clients),
            "--latency",
            str(latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("simulator did not start")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def worker(side: str, url: str, db: Path | None = None, **opts: Any) -> dict[str, Any]:
    """Run bench/worker.py once in a fresh interpreter; returns its JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        target = db or Path(tmp) / "bench.db"
        args = [sys.executable, str(HERE / "worker.py"), side, url, str(target)]
        for k, v in opts.items():
            args += [f"--{k}", str(v)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def median(values: list[float]) -> float:
    return statistics.median(values)
