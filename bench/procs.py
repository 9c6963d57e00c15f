"""Processes for the benchmarks: a simulator subprocess, and a command timed from outside.

`timed(args)` runs a command to completion and reports what the operating system accounted for
it (wall seconds from start to exit, user + system CPU of the process and the children it
waited for, its peak RSS) — interpreter start-up, imports and set-up included, as a user sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Timed:
    wall: float
    cpu: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def env_for(*, isolated: bool = False) -> dict[str, str]:
    """The environment a measured command gets: ours sees the repository (so `bench` and, in a
    checkout without an install, `daemon` import); a peer sees nothing of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if not isolated:
        env["PYTHONPATH"] = str(ROOT)
    return env


def timed(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> Timed:
    """Run `args` to completion; raise with its stderr when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(args), stdout=out, stderr=err, env=env, cwd=ROOT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{stderr[-3000:]}")
    rss = usage.ru_maxrss / 1024  # KiB on Linux
    return Timed(wall, usage.ru_utime + usage.ru_stime, rss, stdout, stderr)


def last_json(text: str) -> dict[str, Any]:
    return dict(json.loads(text.strip().splitlines()[-1]))


@contextlib.contextmanager
def simulators(
    *, blesta: int = 0, halo: int = 0, billomat: int = 0, latency: float = 0.02
) -> Iterator[dict[str, Any]]:
    """`bench/servers.py` in its own process; yields the JSON it printed; kills it after."""
    args = [sys.executable, "-m", "bench.servers", "--latency", str(latency)]
    args += ["--blesta", str(blesta), "--halo", str(halo), "--billomat", str(billomat)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env_for(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError("the simulators did not start")
        yield dict(json.loads(line))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
