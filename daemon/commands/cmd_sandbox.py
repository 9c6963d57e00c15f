"""`daemon sandbox [--run-once] [--port P] [--dir D] [--demo-size N]`: the embedded default.

Starts simulated Blesta, Reseller, Billomat, Halo and NetSapiens servers on loopback with demo
data, writes `D/sandbox.toml` pointing at them (a free listen port, demo rules) and prints
`config: <path>` first so other commands can use it. Without `--run-once` it then runs the
daemon itself (`daemon run`) against them until Ctrl-C / SIGTERM, and prints how to make a test
SMS arrive. With `--run-once` it takes the tour: syncs every job, makes scripted SMS arrive at
the simulated PBX (which posts them to the daemon's real listener), waits for the SMS reply and
the Halo ticket and its note, prints what happened and exits — 0 when all of it worked.

`--demo-size N` gives every simulator N records (Blesta clients, each with contacts, invoices,
services and transactions; Reseller licences; Billomat and Halo records per resource;
NetSapiens CDRs), e.g. `--demo-size 100000` to try a large sync; building 100k takes seconds,
and the config then leaves out hosted Halo's 300-requests-per-5-minutes budget so it finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.clock import SystemClock
from daemon.commands.common import bounded_int

ORDER = 90


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "sandbox",
        parents=[common],
        help="simulated upstreams on loopback plus a config that points at them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-once", action="store_true", help="sync every job once, then exit")
    p.add_argument(
        "--port",
        type=bounded_int(0, 65535 - 4),
        default=0,
        metavar="P",
        help="first of five ports (default: free)",
    )
    p.add_argument("--dir", type=Path, default=None, metavar="D", help="where to write files")
    p.add_argument("--json", action="store_true", help="with --run-once: summary as JSON")
    p.add_argument(
        "--simulators-only",
        action="store_true",
        help="start the simulators and write the config, but do not run the daemon",
    )
    p.add_argument(
        "--demo-size",
        type=bounded_int(1, 10_000_000),
        default=None,
        metavar="N",
        help="records per simulator (default: a small demo; e.g. 100000 to try a large sync)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    directory = args.dir or Path(tempfile.mkdtemp(prefix="integration-daemon-sandbox-"))
    return asyncio.run(_main(directory.resolve(), args))


def _free_listen() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _main(directory: Path, args: argparse.Namespace) -> int:
    from daemon.commands.common import load_cli_settings
    from daemon.sandbox.orchestra import run_sandbox

    async with run_sandbox(
        directory,
        port=args.port,
        now=SystemClock().now(),
        demo_size=args.demo_size,
        listen=_free_listen(),
    ) as sandbox:
        print(f"config: {sandbox.config_path}", flush=True)
        settings = load_cli_settings(str(sandbox.config_path))
        if args.run_once:
            from daemon.commands.sandbox_tour import tour

            return await tour(sandbox, settings, as_json=args.json)
        if args.simulators_only:
            _print_guide(sandbox, None)
            await _until_stopped()
            return 0
        return await _serve(sandbox, settings)


async def _serve(sandbox: Any, settings: Any) -> int:
    """`daemon run` against the simulators until Ctrl-C / SIGTERM."""
    import anyio

    from daemon.service import Service

    service = Service(settings, clock=SystemClock(), config_path=sandbox.config_path)
    async with anyio.create_task_group() as tg:
        address = await tg.start(service.serve)
        _print_guide(sandbox, address)
    print("sandbox stopped", file=sys.stderr)
    return 0


def _print_guide(sandbox: Any, address: str | None) -> None:
    from daemon.sandbox.netsapiens_sim import SIM_INBOUND_PATH
    from daemon.sandbox.orchestra import OWN_NUMBER

    cfg = sandbox.config_path
    for name, url in sandbox.urls.items():
        print(f"  {name:<11} {url}")
    ns = sandbox.urls["netsapiens"]
    running = (
        f"The daemon is running (listener http://{address}, /healthz, /metrics)"
        if address
        else f"The simulators are running (start the daemon: daemon --config {cfg} run)"
    )
    print(
        f"\n{running} until Ctrl-C. In another terminal:\n"
        f"  daemon --config {cfg} status\n"
        f"  daemon --config {cfg} events list\n"
        f"  daemon --config {cfg} api halo tickets list\n"
        "Make an SMS arrive at the simulated PBX (it posts it to the daemon's listener; a "
        "known client saying hello gets a reply, anything else becomes a Halo ticket):\n"
        f"  curl -s -X POST {ns}{SIM_INBOUND_PATH} -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"from": "15550001111", "to": "{OWN_NUMBER.lstrip("+")}", '
        f'"text": "my internet is down"}}\'',
        flush=True,
    )


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("sandbox stopped", file=sys.stderr)
