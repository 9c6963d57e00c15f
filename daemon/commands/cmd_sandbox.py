"""`daemon sandbox [--run-once] [--port P] [--dir D] [--demo-size N]`: the embedded default.

Starts simulated Blesta, Reseller, Billomat, Halo and NetSapiens servers on loopback with demo
data, writes `D/sandbox.toml` pointing at them, and prints `config: <path>` first so other
commands can use it while the sandbox runs. With `--run-once` it runs every sync job once
against them, prints the summary and exits (0 when every job succeeded). Without it the
simulators stay up until Ctrl-C / SIGTERM.

`--demo-size N` gives every simulator N records (Blesta clients, each with contacts, invoices,
services and transactions; Reseller licences; Billomat and Halo records per resource;
NetSapiens CDRs), e.g. `--demo-size 100000` to try a large sync; building 100k takes seconds,
and the config then leaves out hosted Halo's 300-requests-per-5-minutes budget so it finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.clock import SystemClock

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
        "--port", type=int, default=0, metavar="P", help="first of five ports (default: free)"
    )
    p.add_argument("--dir", type=Path, default=None, metavar="D", help="where to write files")
    p.add_argument("--json", action="store_true", help="with --run-once: summary as JSON")
    p.add_argument(
        "--demo-size",
        type=_demo_size,
        default=None,
        metavar="N",
        help="records per simulator (default: a small demo; e.g. 100000 to try a large sync)",
    )
    p.set_defaults(handler=handle)


def _demo_size(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError("must be from 1 to 10000000")
    return value


def handle(args: argparse.Namespace) -> int:
    directory = args.dir or Path(tempfile.mkdtemp(prefix="integration-daemon-sandbox-"))
    return asyncio.run(_main(directory.resolve(), args))


async def _main(directory: Path, args: argparse.Namespace) -> int:
    from daemon.commands.cmd_run_once import exit_code, print_summary, run_once
    from daemon.commands.common import load_cli_settings
    from daemon.sandbox.orchestra import run_sandbox

    async with run_sandbox(
        directory, port=args.port, now=SystemClock().now(), demo_size=args.demo_size
    ) as sandbox:
        print(f"config: {sandbox.config_path}", flush=True)
        settings = load_cli_settings(str(sandbox.config_path))
        if args.run_once:
            results = await run_once(settings, [], tty=not args.json)
            print_summary(results, as_json=args.json)
            if not args.json:
                print(f"database: {settings.daemon.database}")
            return exit_code(results)
        _print_guide(sandbox)
        await _until_stopped()
    return 0


def _print_guide(sandbox: Any) -> None:
    cfg = sandbox.config_path
    for name, url in sandbox.urls.items():
        print(f"  {name:<11} {url}")
    print(
        "\nThe simulators run until Ctrl-C. In another terminal:\n"
        f"  daemon --config {cfg} run-once\n"
        f"  daemon --config {cfg} status\n"
        f"  daemon --config {cfg} api blesta clients getList status=active\n"
        f"  daemon --config {cfg} api halo tickets list\n"
        "Send a test SMS through the simulated PBX (it is kept in the simulator):\n"
        f"  daemon --config {cfg} api netsapiens send-sms --from 15559870000 "
        "--to 15551230000 'hello'",
        flush=True,
    )


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    await stop.wait()
    print("sandbox stopped", file=sys.stderr)
