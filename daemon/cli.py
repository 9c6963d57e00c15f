"""The `daemon` command: parses arguments, delegates to the package, owns the exit codes.

Exit codes (DESIGN §2): 0 success, 1 the work failed, 2 bad usage or invalid configuration
(130/143 when SIGINT/SIGTERM stopped a command). A command run with `--json` that fails prints
one JSON object on stdout (`daemon.commands.common.failure`: `error`, `error_type`, `exit`),
bad usage included, besides the message on stderr.
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
from typing import Any, NoReturn, cast

from daemon import __version__
from daemon.commands import API_COMMANDS, COMMANDS, Command, chosen

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad usage found by argparse, raised instead of its print-and-exit so `main` can also
    answer it as JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse, except that an error raises `_UsageError` (so do its subparsers)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


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
    parser = _Parser(
        prog="daemon",
        description="integration-daemon: syncs Blesta, Billomat, HaloPSA and NetSapiens into "
        "SQLite and turns PBX events into actions.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Its subparsers are `_Parser`s too; the commands' `register` needs only argparse's API.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
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
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _usage_error(exc, wants_json(argv))
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


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON (`--json` before any `--`, or an abbreviation
    argparse takes for it, such as `--js`): known even when argparse refused the rest of it."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) >= 3 and "--json".startswith(arg):
            return True
    return False


def _usage_error(exc: _UsageError, as_json: bool) -> NoReturn:
    """What argparse prints for bad usage (the usage line and the error, on stderr), the JSON
    failure on stdout when `--json` was given, and exit 2."""
    exc.parser.print_usage(sys.stderr)
    text = f"{exc.parser.prog}: error: {exc.message}"
    print(text, file=sys.stderr)
    if as_json:
        from daemon.commands.common import failure, print_failure

        print_failure(failure(text, "UsageError", EXIT_USAGE))
    raise SystemExit(EXIT_USAGE)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """The handler's exit code; each error it raises becomes a message on stderr and an exit
    code, and, for a `--json` command, also the JSON failure object on stdout (with any keys
    the command put in `args.json_failure`, such as status's `healthy`)."""
    import json
    import traceback

    from daemon.commands.common import failure, print_failure
    from daemon.errors import ConfigError, DaemonError, DatabaseMismatch, UpstreamError
    from daemon.logs import redact_strings

    def extra() -> dict[str, Any]:  # read after the handler ran: it may have added keys
        return dict(getattr(args, "json_failure", None) or {})

    try:
        return int(handler(args))
    except BrokenPipeError:
        # The reader went away (`daemon api ... | head`): stop quietly, as Python's docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except ConfigError as exc:
        _error(str(exc))
        code = EXIT_USAGE
        problems = [{"key": p.path, "message": p.message} for p in exc.problems]
        answer = {**failure(str(exc), type(exc).__name__, code, **extra()), "problems": problems}
    except UpstreamError as exc:
        _error(json.dumps(redact_strings(exc.as_dict()), indent=2))
        code = EXIT_FAILED
        details = {k: v for k, v in exc.as_dict().items() if k not in ("error", "message")}
        answer = {**failure(str(exc), type(exc).__name__, code, **extra()), **details}
    except DaemonError as exc:
        _error(f"error: {exc}")
        # A database this build cannot use is set-up, like a bad config: retrying cannot help.
        code = EXIT_USAGE if isinstance(exc, DatabaseMismatch) else EXIT_FAILED
        answer = failure(str(exc), type(exc).__name__, code, **extra())
    except KeyboardInterrupt:
        _error("interrupted")
        code = 130
        answer = failure("interrupted", "Interrupted", code, **extra())
    except Exception as exc:  # the last boundary: a bug, reported without leaking a secret
        if os.environ.get("DAEMON_DEBUG"):
            _error(traceback.format_exc())
        message = f"internal error: {type(exc).__name__}: {exc}"
        _error(
            f"error: {message}\nThis is a bug in the daemon; set DAEMON_DEBUG=1 for the traceback."
        )
        code = EXIT_FAILED
        answer = failure(message, "InternalError", code, **extra())
    if getattr(args, "json", False):
        print_failure(answer)
    return code


def _error(text: str) -> None:
    from daemon.logs import redact_text

    print(redact_text(text), file=sys.stderr)
