"""SMS to reply: from an SMS arriving at the PBX to the daemon's reply arriving back at it.

    python -m bench.sms_latency [--samples 50]

The simulators of `daemon sandbox` run in this process (`daemon.sandbox.orchestra.run_sandbox`,
its demo data and config: the `hello` rule answers a known client). The daemon is the real one,
as a user runs it, in its own process: `daemon run-once blesta-clients` fills the contacts, then
`daemon run` serves (its listener, inbox, dispatcher and NetSapiens client). Each sample is a
different known client saying hello: `NetsapiensState.inbound_sms` stores the message and POSTs
it to the daemon's subscription, as the PBX does; the time is from that call to the moment the
daemon's send-SMS request reaches the simulator (`NetsapiensState.on_sent`). Samples run one at a
time, a few under the loop guard's breaker (60 auto-replies in 5 minutes) so none is held back.
Targets (issue 18): p50 <= 50 ms, p99 <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import ROOT, env_for
from bench.sync_peers import daemon_command

WAIT = 30.0


def _free_listen() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _daemon(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *daemon_command(), "--config", str(config), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env_for(), cwd=ROOT,
    )  # fmt: skip


async def _until(found: Any) -> Any:
    with_deadline = time.monotonic() + WAIT
    while (value := found()) in (None, [], False):
        if time.monotonic() > with_deadline:
            raise TimeoutError("the daemon did not get ready in time")
        await asyncio.sleep(0.02)
    return value


async def measure(samples: int) -> dict[str, Any]:
    from daemon.clock import SystemClock
    from daemon.sandbox.orchestra import OWN_NUMBER, run_sandbox

    with tempfile.TemporaryDirectory() as tmp:
        now = SystemClock().now()
        size = max(samples + 10, 60)
        async with run_sandbox(Path(tmp), now=now, listen=_free_listen(), demo_size=size) as sb:
            sync = await _daemon(sb.config_path, "run-once", "blesta-clients")
            _, err = await sync.communicate()
            if sync.returncode != 0:
                raise RuntimeError(f"run-once failed: {err.decode()[-2000:]}")
            db = Path(tmp) / "state.db"
            with sqlite3.connect(db) as conn:
                phones = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT phone FROM contacts WHERE table_name = 'blesta_clients'"
                        " ORDER BY phone"
                    )
                ]
            if len(phones) < samples:
                raise RuntimeError(f"only {len(phones)} known phones for {samples} samples")
            ns = sb.states["netsapiens"]
            arrived: dict[str, float] = {}
            waiting: dict[str, asyncio.Event] = {}

            def on_sent(msg: dict[str, Any]) -> None:
                dest = str(msg.get("dialed", ""))
                arrived.setdefault(dest, time.perf_counter())
                if dest in waiting:
                    waiting[dest].set()

            ns.on_sent.append(on_sent)
            service = await _daemon(sb.config_path, "run")
            try:
                await _until(lambda: ns.live_subscriptions("message"))
                ours = OWN_NUMBER.lstrip("+")
                latencies: list[float] = []
                for i, phone in enumerate(phones[:samples]):
                    sender = phone.lstrip("+")
                    waiting[sender] = asyncio.Event()
                    start = time.perf_counter()
                    await ns.inbound_sms(sender, ours, f"hello, sample {i}")
                    await asyncio.wait_for(waiting[sender].wait(), WAIT)
                    latencies.append(arrived[sender] - start)
            finally:
                if service.returncode is None:
                    service.send_signal(signal.SIGTERM)
                await asyncio.wait_for(service.communicate(), 60)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "samples": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "max_ms": ms[-1],
        "min_ms": ms[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from daemon.logs import configure_logging

    configure_logging("warning", "console")
    r = asyncio.run(measure(a.samples))
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"SMS to reply, {r['samples']} samples: p50 {r['p50_ms']:.1f} ms (target <= 50), "
            f"p99 {r['p99_ms']:.1f} ms (target <= 150), min {r['min_ms']:.1f}, "
            f"max {r['max_ms']:.1f}"
        )


if __name__ == "__main__":
    main()
