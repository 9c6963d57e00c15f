"""Start-up: `daemon --help` as a whole process, beside a bare interpreter.

    python -m bench.startup [--runs 21]

Each command imports only its own module (`daemon/commands/__init__.py`), so `daemon --help`
imports no command, no aiohttp and no config models. Runs alternate (bare python, `daemon
--help`, `daemon run-once --help`) and the figure is each one's median wall time from start to
exit, as `farm-bench` would time it. Target (issue 18): `daemon --help` under 0.15 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench.procs import env_for, timed
from bench.sync_peers import daemon_command


def measure(runs: int) -> dict[str, float]:
    daemon = daemon_command()
    commands = {
        "python_s": [sys.executable, "-c", "pass"],
        "help_s": [*daemon, "--help"],
        "run_once_help_s": [*daemon, "run-once", "--help"],
    }
    env = env_for()
    for args in commands.values():  # warm the page cache and the .pyc files
        timed(args, env=env)
    walls: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(runs):
        for key, args in commands.items():
            walls[key].append(timed(args, env=env).wall)
    return {k: statistics.median(v) for k, v in walls.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = measure(a.runs)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"median of {a.runs}: python -c pass {r['python_s']:.3f} s, daemon --help "
              f"{r['help_s']:.3f} s (target < 0.15 s), daemon run-once --help "
              f"{r['run_once_help_s']:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
