"""The `daemon` command: parses arguments, delegates to the package, owns the exit codes.

Exit codes (DESIGN §2): 0 success, 1 the work failed, 2 bad usage or invalid configuration.
Each subcommand lives in `daemon/commands/<name>.py` and registers its own parser, so this
module stays a thin dispatcher and only it turns exceptions into exit codes. Only the module of
the command being run is imported (`daemon --help` imports none, and no aiohttp): the others are
listed from `daemon.commands.COMMANDS`.

Everything a command writes to stdout or stderr passes the log redactor (`redacted_stdio`), so
no output path can carry a secret the config resolved or a token issued since, in any spelling.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from daemon import __version__
from daemon.commands import API_COMMANDS, COMMANDS, Command, chosen

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _config_option() -> argparse.ArgumentParser:
    """`--config` is accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $DAEMON_CONFIG, ./daemon.toml, "
        "/etc/integration-daemon/daemon.toml)",
    )
    return p


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    commands: Sequence[Command],
    wanted: str | None,
    load_all: bool,
) -> None:
    """Register `commands` in order: the wanted one (or all, for `load_all`) by its own module,
    the others as a name and a help line, which is all `--help` shows of them."""
    for command in commands:
        if load_all or command.name == wanted:
            command.load().register(sub, common)
        else:
            sub.add_parser(command.name, parents=[common], help=command.help)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given `argv`, one that imports only the command `argv` names (what
    `main` uses: parsing `argv` with either gives the same result)."""
    command, upstream = chosen(argv) if argv is not None else (None, None)
    load_all = argv is None
    common = _config_option()
    parser = argparse.ArgumentParser(
        prog="daemon",
        description="integration-daemon: syncs Blesta, Billomat, HaloPSA and NetSapiens into "
        "SQLite and turns PBX events into actions.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add(sub, common, COMMANDS, command, load_all)
    api = sub.add_parser(
        "api",
        parents=[common],
        help="raw upstream calls for scripts and debugging (JSON out)",
        description="Raw calls to one upstream; prints JSON, exits 1 with the error JSON.",
    )
    api_sub = api.add_subparsers(dest="upstream", metavar="UPSTREAM")
    api_sub.required = True
    _add(api_sub, common, API_COMMANDS, upstream, load_all)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names (default: this process's arguments) and return its exit
    code. Called without `argv` — as the `daemon` command itself — a command that asks for it
    (`set_defaults(exit_now=True)`: short-lived ones such as run-once) ends the process here."""
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    handler = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse enforces a subcommand
        parser.print_help()
        return EXIT_USAGE
    from daemon.logs import configure_logging, redacted_stdio

    with redacted_stdio():
        # Until a command loads its config, log warnings and worse to stderr: stdout is the
        # answer.
        configure_logging("warning", "auto", stream=sys.stderr)
        code = _run(handler, args)
    if own_process and getattr(args, "exit_now", False):
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which for a short command is a
    real share of its time (about 75 ms after a 10k-record run-once: a last collection over
    everything still alive, then every module torn down). Only once the command has finished:
    its store and sessions are closed, so all that is left to do is flush what was printed
    and logged."""
    import logging

    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # the reader went away: what was printed is lost
        code = code or EXIT_FAILED
    os._exit(code)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    import json
    import traceback

    from daemon.errors import ConfigError, DaemonError, UpstreamError
    from daemon.logs import redact_strings

    try:
        return int(handler(args))
    except BrokenPipeError:
        # The reader went away (`daemon api ... | head`): stop quietly, as Python's docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except UpstreamError as exc:
        _error(json.dumps(redact_strings(exc.as_dict()), indent=2))
        return EXIT_FAILED
    except DaemonError as exc:
        _error(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # the last boundary: a bug, reported without leaking a secret
        if os.environ.get("DAEMON_DEBUG"):
            _error(traceback.format_exc())
        _error(
            f"error: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in the daemon; set DAEMON_DEBUG=1 for the traceback."
        )
        return EXIT_FAILED


def _error(text: str) -> None:
    from daemon.logs import redact_text

    print(redact_text(text), file=sys.stderr)
