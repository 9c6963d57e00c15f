"""`python -m bench [--quick]`: every benchmark, one table, each figure beside its reference.

Each benchmark runs in its own process (`python -m bench.<name> --json`, the same command that
runs it alone), so one cannot warm or weigh on another. The table gives each figure, the
reference measured in the same run (the peer client, the no-op handler, the ideal bound, the
small size), their ratio, the target and whether it is met; then the machine it ran on.
`--quick` runs everything at small sizes (about a minute and a half): CI's smoke run, which
proves the benchmarks still work; its ratios are not the figures to quote (fixed costs weigh
more at small sizes). The full run takes about eight minutes; docs/performance.md keeps its
latest table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import ROOT, env_for

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    figure: str
    value: str
    reference: str
    ratio: str
    target: str
    ok: bool | None  # None: no target, or not measured

    def cells(self) -> list[str]:
        mark = {True: "ok", False: "MISSED", None: "—"}[self.ok]
        return [self.figure, self.value, self.reference, self.ratio, self.target, mark]


def _run(args: list[str], timeout: float = 1800) -> list[dict[str, Any]]:
    """Run one benchmark; its JSON lines (one object each)."""
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env_for(), cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-1500:] or f"exit {out.returncode}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _module(name: str, *args: str) -> list[dict[str, Any]]:
    return _run([sys.executable, "-m", f"bench.{name}", "--json", *args])


def _script(name: str, *args: str) -> list[dict[str, Any]]:
    """The benchmarks that are scripts importing their neighbours (`cd bench; python x.py`)."""
    return _run([sys.executable, str(HERE / name), "--json", *args])


# -- sections: each returns its rows -----------------------------------------------------------


def sync_rows(quick: bool) -> list[Row]:
    from bench.sync_peers import PEERS

    rows: list[Row] = []
    rewrites: list[str] = []
    for upstream in ("blesta", "halo", "billomat"):
        args = ["--only", upstream] + (["--quick"] if quick else [])
        d = _module("sync_peers", *args)[0]
        peer = PEERS[upstream][0]
        if "skipped" in d:
            rows.append(Row(f"{upstream.capitalize()} sync vs {peer}: skipped ({d['skipped']})",
                            "", "", "", "", None))  # fmt: skip
            continue
        label = f"{upstream.capitalize()} {d['records'] // 1000}k"
        rows.append(
            Row(
                f"{label} sync, whole process: ours vs {peer}",
                f"{d['ours_s']:.2f} s",
                f"{d['peer_s']:.2f} s",
                f"{d['speedup']:.2f}x",
                f"≥ {d['target']:g}x",
                d["speedup"] >= d["target"],
            )
        )
        ideal = f"{d['ideal_s']:.3f} s ({d['pages']} pages)"
        rows.append(
            Row(
                f"{label}: ours whole process / ideal bound",
                f"{d['ours_s']:.2f} s",
                ideal,
                f"{d['ours_vs_ideal']:.3f}x",
                "≤ 1.2x",
                d["ours_vs_ideal"] <= 1.2,
            )
        )
        sync_ratio = d["ours_sync_s"] / d["ideal_s"]
        rows.append(
            Row(
                f"{label}: the sync itself (run duration) / ideal bound",
                f"{d['ours_sync_s']:.2f} s",
                ideal,
                f"{sync_ratio:.3f}x",
                "≤ 1.2x",
                sync_ratio <= 1.2,
            )
        )
        if d.get("floor_s"):
            rows.append(
                Row(
                    f"{label}: the sync itself / transport floor (bare aiohttp, same pages)",
                    f"{d['ours_sync_s']:.2f} s",
                    f"{d['floor_s']:.3f} s",
                    f"{d['ours_sync_vs_floor']:.3f}x",
                    "",
                    None,
                )
            )
        rewrites.append(f"{upstream} {d['resync_rewritten']}")
    if not rewrites:
        return rows
    total = sum(int(r.split()[1]) for r in rewrites)
    rows.append(
        Row(
            "unchanged re-sync: rows rewritten",
            str(total),
            ", ".join(rewrites),
            "",
            "0",
            total == 0,
        )
    )
    return rows


def startup_rows(quick: bool) -> list[Row]:
    d = _module("startup", "--runs", "5" if quick else "21")[0]
    return [
        Row(
            "start-up: `daemon --help`, whole process (median)",
            f"{d['help_s']:.3f} s",
            f"{d['python_s']:.3f} s (python -c pass)",
            f"{d['help_s'] / d['python_s']:.1f}x",
            "< 0.15 s",
            d["help_s"] < 0.15,
        ),
        Row(
            "start-up: `daemon run-once --help` (median)",
            f"{d['run_once_help_s']:.3f} s",
            f"{d['python_s']:.3f} s (python -c pass)",
            f"{d['run_once_help_s'] / d['python_s']:.1f}x",
            "",
            None,
        ),
    ]


def memory_rows(quick: bool) -> list[Row]:
    args = ["--small", "1000", "--large", "5000"] if quick else []
    rows = []
    for d in _module("sync_memory", *args):
        ok = d["ratio"] <= 1.25 and d["large_rss_mb"] < 150
        rows.append(
            Row(
                f"{d['upstream'].capitalize()} peak RSS, {d['large'] // 1000}k vs "
                f"{d['small'] // 1000}k records",
                f"{d['large_rss_mb']:.1f} MB",
                f"{d['small_rss_mb']:.1f} MB",
                f"{d['ratio']:.2f}x",
                "≤ 1.25x, < 150 MB",
                ok,
            )
        )
    return rows


def webhook_rows(quick: bool) -> list[Row]:
    d = _script("webhook_ingest.py", *(["--quick"] if quick else []))[0]
    return [
        Row(
            "durable webhook ingest vs no-op handler (req/s)",
            f"{d['listener_rps']:.0f}/s",
            f"{d['noop_rps']:.0f}/s",
            f"{d['ratio']:.2f}x",
            "≥ 0.6x",
            d["ratio"] >= 0.6,
        ),
        Row(
            "  the same by server CPU per request",
            "",
            "",
            f"{d['cpu_ratio']:.2f}x",
            "",
            None,
        ),
        Row(
            "durable webhook ingest p99 latency",
            f"{d['listener_p99_ms']:.1f} ms",
            f"{d['noop_p99_ms']:.1f} ms (no-op)",
            "",
            "≤ 25 ms",
            d["listener_p99_ms"] <= 25,
        ),
    ]


def sms_rows(quick: bool) -> list[Row]:
    d = _module("sms_latency", "--samples", "10" if quick else "50")[0]
    return [
        Row(f"SMS to reply p50 ({d['samples']} samples)", f"{d['p50_ms']:.1f} ms", "", "",
            "≤ 50 ms", d["p50_ms"] <= 50),
        Row("SMS to reply p99", f"{d['p99_ms']:.1f} ms", "", "", "≤ 150 ms",
            d["p99_ms"] <= 150),
    ]  # fmt: skip


def token_rows(quick: bool) -> list[Row]:
    rows = []
    for d in _module("token_single_flight", "--callers", "200"):
        ratio = d["callers"] / max(1, d["token_requests"])
        rows.append(
            Row(
                f"{d['upstream']} token expired ({d['expiry']}): callers per token request",
                f"{d['callers']} callers",
                f"{d['token_requests']} request(s)",
                f"{ratio:.0f} : 1",
                "200 : 1",
                d["token_requests"] == 1,
            )
        )
    return rows


def simulator_rows(quick: bool) -> list[Row]:
    sizes = "1000,5000" if quick else "10000,100000"
    found = [
        d
        for d in _script(
            "sim_pages.py", "--sizes", sizes, "--pages", "20" if quick else "200", "--only", "halo"
        )
        if d["simulator"] == "halo tickets"
    ]
    small, large = found[0], found[-1]
    return [
        Row(
            f"simulator CPU per warm Halo page at {large['records'] // 1000}k records",
            f"{large['warm_us_mean']} µs",
            f"{small['warm_us_mean']} µs at {small['records'] // 1000}k",
            f"{large['warm_us_mean'] / small['warm_us_mean']:.2f}x",
            "< 1 ms",
            large["warm_us_mean"] < 1000,
        )
    ]


def store_rows(quick: bool) -> list[Row]:
    found = _script("store_ingest.py", *(["--quick"] if quick else []))
    d = next(r for r in found if r["mode"] == "NORMAL")
    return [
        Row(f"store: insert_events, 64 callers (p99 {d['p99_ms']:.1f} ms)",
            f"{d['per_second']:.0f}/s", "", "", "", None)
    ]  # fmt: skip


SECTIONS: dict[str, Callable[[bool], list[Row]]] = {
    "sync": sync_rows,
    "startup": startup_rows,
    "memory": memory_rows,
    "webhook": webhook_rows,
    "sms": sms_rows,
    "token": token_rows,
    "simulator": simulator_rows,
    "store": store_rows,
}


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import aiohttp

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model or "unknown",
        "cores": f"{os.cpu_count()} ({usable} usable)",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def table(rows: list[Row]) -> str:
    head = ["figure", "value", "reference", "ratio", "target", "ok?"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:", "---:", "---:", "---", "---"]) + "|",
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: CI's smoke run")
    p.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--save", type=Path, help="also write the rows and machine as JSON here")
    a = p.parse_args()
    wanted = a.only.split(",") if a.only else list(SECTIONS)
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in wanted:
        t = time.monotonic()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        try:
            rows += SECTIONS[name](a.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            rows.append(Row(f"{name}: FAILED", "", "", "", "", False))
            print(f"[{name}] failed: {exc}", file=sys.stderr)
        print(f"[{name}] {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    info = machine()
    mode = "quick (smoke sizes; not the figures to quote)" if a.quick else "full"
    print(f"\n{mode} run, {time.monotonic() - started:.0f} s\n")
    print(table(rows))
    print()
    for k, v in info.items():
        print(f"- {k}: {v}")
    if a.save:
        a.save.write_text(json.dumps({"machine": info, "mode": mode,
                                      "rows": [r.cells() for r in rows]}, indent=2))  # fmt: skip
    # A missed target is a finding, not a crash: CI fails only when a benchmark broke.
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
