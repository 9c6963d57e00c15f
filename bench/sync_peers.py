"""Whole-process sync: `daemon run-once JOB` against a script on the client a user would write.

    python -m bench.sync_peers [--only blesta,halo,billomat] [--runs N] [--quick]

Both sides are timed from outside as a whole process (interpreter start-up, imports, config,
fetching every page and writing every record to SQLite), in turn, against one simulator process
(`bench/servers.py`, 20 ms added to every answer), with the same records:

- Blesta: 20,000 clients at Blesta's page size of 20; ours vs blesta-sdk 0.6.0 `get_all`.
- Halo: 20,000 tickets, page size 50 (ours) vs halopsa 2.0.2 `Tickets.search(pageinate=True)`
  (its default page size, also 50).
- Billomat: 10,000 clients, per_page 1000 (ours) vs billomapy 2.5.3 `get_all_clients` (its
  default per_page, also 1000).

Each peer runs in its own virtualenv (`tests/peer_venvs.py`, cached between runs) and writes
every record with one `executemany` (`bench/peers/`); ours is the installed `daemon` command
with a config naming the simulator, writing into a fresh database each run. The ideal bound is
pages x latency / max_concurrency (8): what ours would take with nothing but the upstream's
latency, every request slot always busy. The transport floor (`bench/transport_floor.py`) is
what bare aiohttp takes to fetch the same pages at the same concurrency, doing nothing with them:
the simulator's own answer time and the machine's scheduling, which the ideal bound leaves out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import ROOT, Timed, env_for, last_json, simulators, timed
from bench.transport_floor import floor

if str(ROOT) not in sys.path:  # tests.peer_venvs builds the peers' virtualenvs
    sys.path.insert(0, str(ROOT))

PEERS = {
    "blesta": ("blesta-sdk", ["blesta-sdk==0.6.0"], "blesta_sdk_sync.py"),
    "halo": ("halopsa", ["halopsa==2.0.2"], "halopsa_sync.py"),
    "billomat": ("billomapy", ["billomapy==2.5.3"], "billomapy_sync.py"),
}
PAGE_SIZE = {"blesta": 20, "halo": 50, "billomat": 1000}
FULL_SIZE = {"blesta": 20_000, "halo": 20_000, "billomat": 10_000}
QUICK_SIZE = {"blesta": 2_000, "halo": 2_000, "billomat": 2_000}
TARGET = {"blesta": 8.0, "halo": 5.0, "billomat": 1.3}
# A Billomat run takes half a second, so a noisy moment moves one run by a third: more of them.
MIN_RUNS = {"billomat": 9}
CONCURRENCY = 8
JOB = {"blesta": "blesta-clients", "halo": "halo-tickets", "billomat": "billomat-clients"}
DRIVERS = Path(__file__).resolve().parent / "peers"


@dataclass
class Comparison:
    upstream: str
    records: int
    latency: float
    ours: list[Timed] = field(default_factory=list)
    peer: list[Timed] = field(default_factory=list)
    sync_s: list[float] = field(default_factory=list)  # the run's own duration (ours)
    resync_rewritten: int | None = None
    floor_s: float | None = None  # bare aiohttp over the same pages (bench/transport_floor.py)

    @property
    def pages(self) -> int:
        return math.ceil(self.records / PAGE_SIZE[self.upstream])

    @property
    def ideal(self) -> float:
        return self.pages * self.latency / CONCURRENCY

    def med(self, side: str, what: str = "wall") -> float:
        return float(statistics.median(getattr(t, what) for t in getattr(self, side)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "records": self.records,
            "pages": self.pages,
            "latency": self.latency,
            "ours_s": self.med("ours"),
            "peer_s": self.med("peer"),
            "ours_cpu_s": self.med("ours", "cpu"),
            "peer_cpu_s": self.med("peer", "cpu"),
            "ours_sync_s": statistics.median(self.sync_s),
            "ideal_s": self.ideal,
            "speedup": self.med("peer") / self.med("ours"),
            "target": TARGET[self.upstream],
            "ours_vs_ideal": self.med("ours") / self.ideal,
            "runs": len(self.ours),
            "ours_runs_s": [round(t.wall, 3) for t in self.ours],
            "peer_runs_s": [round(t.wall, 3) for t in self.peer],
            "resync_rewritten": self.resync_rewritten,
            "floor_s": self.floor_s,
            "ours_sync_vs_floor": (
                statistics.median(self.sync_s) / self.floor_s if self.floor_s else None
            ),
        }


def daemon_command() -> list[str]:
    """The `daemon` console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("daemon")
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon"]


def write_config(directory: Path, upstream: str, sim: dict[str, Any]) -> Path:
    """A config with the one upstream and its job; database in `directory`."""
    s = sim[upstream]
    q = json.dumps  # a JSON string is a valid TOML basic string for these values
    head = f'[daemon]\ndatabase = {q(str(directory / "state.db"))}\nlog_level = "info"\n\n'
    if upstream == "blesta":
        up = f"url = {q(s['url'])}\nuser = {q(s['user'])}\nkey = {q(s['key'])}\n"
        job = 'resource = "clients"\n'
    elif upstream == "halo":
        up = (
            f"tenant_url = {q(s['url'])}\nclient_id = {q(s['client_id'])}\n"
            f"client_secret = {q(s['client_secret'])}\n"
        )
        job = 'resource = "tickets"\n'
    else:
        up = (
            f"billomat_id = {q(s['billomat_id'])}\nurl = {q(s['url'])}\n"
            f"api_key = {q(s['api_key'])}\napp_id = {q(s['app_id'])}\n"
            f"app_secret = {q(s['app_secret'])}\n"
        )
        job = 'resource = "clients"\n'
    text = (
        f"{head}[upstreams.{upstream}]\n{up}max_concurrency = {CONCURRENCY}\n\n"
        f'[[sync]]\nname = "{JOB[upstream]}"\nupstream = "{upstream}"\n{job}every = "1h"\n'
    )
    path = directory / "bench.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def run_ours(upstream: str, sim: dict[str, Any], directory: Path) -> tuple[Timed, dict[str, Any]]:
    config = directory / "bench.toml"
    if not config.exists():
        write_config(directory, upstream, sim)
    args = [*daemon_command(), "--config", str(config), "run-once", JOB[upstream], "--json"]
    t = timed(args, env=env_for())
    summary = last_json_block(t.stdout)
    job = summary["jobs"][0]
    if job["status"] != "ok" or job["fetched"] != sim[upstream]["records"]:
        raise RuntimeError(f"ours: {job}")
    if job.get("incomplete"):
        raise RuntimeError(f"ours: incomplete walk: {job['incomplete']}")
    return t, job


def last_json_block(text: str) -> dict[str, Any]:
    """`run-once --json` prints one indented JSON document."""
    start = text.index("{")
    return dict(json.loads(text[start:]))


def peer_python(upstream: str) -> Path:
    from tests.peer_venvs import peer_python as build

    name, requirements, _ = PEERS[upstream]
    return build(name, requirements)


def run_peer(upstream: str, sim: dict[str, Any], python: Path, db: Path) -> Timed:
    cfg = {**sim[upstream], "db": str(db)}
    script = DRIVERS / PEERS[upstream][2]
    # -E -s: the peer sees only its own virtualenv (no PYTHONPATH, no user site)
    t = timed([str(python), "-E", "-s", str(script), json.dumps(cfg)], env=env_for(isolated=True))
    fetched = last_json(t.stdout)["fetched"]
    if fetched != sim[upstream]["records"]:
        raise RuntimeError(f"peer fetched {fetched} of {sim[upstream]['records']}")
    return t


def compare(upstream: str, records: int, runs: int, latency: float = 0.02) -> Comparison:
    python = peer_python(upstream)
    result = Comparison(upstream, records, latency)
    sizes = {upstream: records}
    with simulators(**sizes, latency=latency) as sim, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for i in range(runs):
            for side in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
                run_dir = base / f"{side}{i}"
                run_dir.mkdir()
                if side == "ours":
                    t, job = run_ours(upstream, sim, run_dir)
                    result.ours.append(t)
                    result.sync_s.append(job["duration_s"])
                else:
                    result.peer.append(run_peer(upstream, sim, python, run_dir / "peer.db"))
                if side == "ours" and i == 0:
                    _, again = run_ours(upstream, sim, run_dir)  # unchanged re-sync
                    result.resync_rewritten = again["inserted"] + again["updated"]
                shutil.rmtree(run_dir)
        result.floor_s = floor(upstream, sim, result.pages, concurrency=CONCURRENCY)
    return result


def print_comparison(c: Comparison) -> None:
    d = c.as_dict()
    name, *_ = PEERS[c.upstream]
    print(
        f"{c.upstream}: {c.records} records, {c.pages} pages, {c.latency * 1000:.0f} ms/request, "
        f"max_concurrency {CONCURRENCY}, median of {d['runs']} runs each (whole process)"
    )
    print(f"  {'':22}{'wall s':>9}{'cpu s':>8}")
    print(f"  {'ours (daemon run-once)':22}{d['ours_s']:>9.2f}{d['ours_cpu_s']:>8.2f}")
    print(f"  {'peer (' + name + ')':22}{d['peer_s']:>9.2f}{d['peer_cpu_s']:>8.2f}")
    print(f"  {'ideal bound':22}{d['ideal_s']:>9.2f}")
    print(f"  {'transport floor':22}{d['floor_s']:>9.2f}   (bare aiohttp, same pages)")
    print(
        f"  speed-up {d['speedup']:.2f}x (target >= {d['target']:g}x); ours / ideal "
        f"{d['ours_vs_ideal']:.2f}x (target <= 1.2x); the sync itself {d['ours_sync_s']:.2f} s "
        f"({d['ours_sync_vs_floor']:.2f}x the transport floor); "
        f"unchanged re-sync rewrote {d['resync_rewritten']} rows"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="blesta,halo,billomat")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--records", type=int, default=None, help="override every upstream's size")
    p.add_argument("--quick", action="store_true", help="2,000 records each, one run")
    p.add_argument("--json", action="store_true", help="one JSON object per upstream")
    a = p.parse_args()
    from tests.peer_venvs import PeerInstallError

    for upstream in a.only.split(","):
        n = a.records or (QUICK_SIZE if a.quick else FULL_SIZE)[upstream]
        try:
            c = compare(upstream, n, 1 if a.quick else max(a.runs, MIN_RUNS.get(upstream, 1)))
        except PeerInstallError as exc:  # no network here: say so, as the peer tests skip
            last = (exc.output.strip().splitlines() or ["?"])[-1][:160]
            reason = f"pip cannot install {PEERS[upstream][0]}: {last}"
            print(json.dumps({"upstream": upstream, "skipped": reason}) if a.json else reason)
            continue
        if a.json:
            print(json.dumps(c.as_dict()), flush=True)
        else:
            print_comparison(c)


if __name__ == "__main__":
    main()
