"""The suite-wide leak scan (issue 18): no test secret, in any spelling, in anything the daemon
wrote for people to read or kept on disk.

What is scanned (`tests/conftest.py` wires it into pytest):

* each test's captured stdout and stderr (`report.sections`: the in-process daemon's log lines,
  whatever its handler or structlog printed, CLI `main()` output) and what a test took out of
  `capsys`/`capfd` with `readouterr()`;
* the stdout and stderr of every subprocess a test starts — asyncio ones as the bytes arrive,
  `subprocess` ones as `communicate()` and reads of their pipes return them, and a daemon
  command sent to DEVNULL is sent to a file instead, so that output is read too;
* at the end of the session, every SQLite file (and its `-wal`) under pytest's temporary
  directories, byte for byte, for every secret — the webhook secrets included: a
  subscription's `post_url` is stored masked (migration 4; docs/database.md).

Not scanned: the config files tests write and the simulators' state (secrets are expected
there), and pytest's "Captured log" sections, which are pytest's own rendering of raw log
records — before the daemon's formatter redacts them; what the daemon writes is in stdout.

A leak in a test's output fails that test at teardown, naming the secret, the spelling and
where; a leak in a database file fails the session, naming the file, table and column.
"""

from __future__ import annotations

import asyncio.subprocess
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability import secrets

_SCANNED_SECTIONS = ("stdout", "stderr")


@dataclass
class Findings:
    """Where each leak was seen: `(where, secret, spelling, context)`."""

    items: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, where: str, text: str, table: dict[str, str]) -> None:
        started = time.perf_counter()
        STATS.texts += 1
        STATS.chars += len(text)
        for secret, spelling, at in secrets.find(text, table):
            context = text[max(0, at - 60) : at + len(spelling) + 60].replace("\n", "\\n")
            self.items.append((where, secret, spelling, context))
        STATS.seconds += time.perf_counter() - started

    def report(self) -> str:
        return "\n".join(
            f"secret {secret!r} (as {spelling!r}) in {where}: …{context}…"
            for where, secret, spelling, context in self.items
        )


@dataclass
class _Stream:
    what: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Stats:
    """What the scan read, for the session's summary line."""

    texts: int = 0
    chars: int = 0
    subprocess_streams: int = 0
    databases: int = 0
    database_bytes: int = 0
    seconds: float = 0.0
    leaks: int = 0  # counted where they are reported (tests/conftest.py)

    def line(self) -> str:
        return (
            f"leak scan: {self.texts} outputs ({self.chars / 1e6:.1f} M characters, "
            f"{self.subprocess_streams} from subprocesses), {self.databases} database files "
            f"({self.database_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s: "
            + ("no secret found" if not self.leaks else f"{self.leaks} leaks")
        )


STATS = Stats()


class Collector:
    """Output captured since the last `drain()`, by source."""

    def __init__(self) -> None:
        self.streams: dict[tuple[int, int], _Stream] = {}
        self.texts: list[tuple[str, str]] = []
        self.files: list[tuple[str, Path]] = []  # DEVNULL redirected, read at session end
        self.tmp = Path(tempfile.mkdtemp(prefix="leak-scan-"))

    def chunk(self, key: tuple[int, int], what: str, data: bytes | str) -> None:
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(what)
        stream.data += data.encode("utf-8", "replace") if isinstance(data, str) else data

    def text(self, what: str, data: Any) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if isinstance(data, str) and data:
            self.texts.append((what, data))

    def drain(self) -> list[tuple[str, str]]:
        out = [(s.what, s.data.decode("utf-8", "replace")) for s in self.streams.values()]
        STATS.subprocess_streams += len(out)
        out += self.texts
        self.streams.clear()
        self.texts = []
        return out


COLLECTOR = Collector()


def _describe(args: Any) -> str:
    parts = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    text = " ".join(os.fsdecode(p) if isinstance(p, bytes | os.PathLike) else str(p) for p in parts)
    return text[:120]


def _is_daemon(args: Any) -> bool:
    parts = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    words = [os.fsdecode(p) if isinstance(p, bytes | os.PathLike) else str(p) for p in parts]
    return any(w == "daemon" or w.endswith("/daemon") for w in words)


class _Tee:
    """A subprocess pipe whose reads are also handed to the collector."""

    def __init__(self, stream: Any, what: str):
        self._stream = stream
        self._what = what

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _seen(self, data: Any) -> Any:
        COLLECTOR.chunk((id(self), 0), self._what, data if data else b"")
        return data

    def read(self, *args: Any) -> Any:
        return self._seen(self._stream.read(*args))

    def read1(self, *args: Any) -> Any:
        return self._seen(self._stream.read1(*args))

    def readline(self, *args: Any) -> Any:
        return self._seen(self._stream.readline(*args))

    def readlines(self, *args: Any) -> Any:
        lines = self._stream.readlines(*args)
        for line in lines:
            self._seen(line)
        return lines

    def __iter__(self) -> _Tee:
        return self

    def __next__(self) -> Any:
        return self._seen(next(self._stream))

    def __enter__(self) -> _Tee:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def install() -> None:
    """Patch the places subprocess output passes through, and the simulator's token issue."""
    popen_init = subprocess.Popen.__init__
    communicate = subprocess.Popen.communicate

    def init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        what = f"subprocess `{_describe(args)}`"
        ours: list[int] = []
        if _is_daemon(args):
            for name in ("stdout", "stderr"):
                if kw.get(name) == subprocess.DEVNULL:
                    fd, path = tempfile.mkstemp(dir=COLLECTOR.tmp, suffix=f".{name}")
                    kw[name] = fd
                    ours.append(fd)
                    COLLECTOR.files.append((f"{what} {name} (sent to DEVNULL)", Path(path)))
        try:
            popen_init(self, args, *a, **kw)
        finally:
            for fd in ours:  # the child has its copy
                os.close(fd)
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                setattr(self, name, _Tee(stream, f"{what} {name}"))

    def communicated(self: subprocess.Popen[Any], *a: Any, **kw: Any) -> Any:
        out, err = communicate(self, *a, **kw)
        what = f"subprocess `{_describe(self.args)}`"
        COLLECTOR.text(f"{what} stdout", out)
        COLLECTOR.text(f"{what} stderr", err)
        return out, err

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    subprocess.Popen.communicate = communicated  # type: ignore[method-assign]

    protocol = asyncio.subprocess.SubprocessStreamProtocol
    received = protocol.pipe_data_received

    def pipe_data_received(self: Any, fd: int, data: bytes | str) -> None:
        transport = getattr(self, "_transport", None)
        args = getattr(getattr(transport, "_proc", None), "args", "?")
        name = {1: "stdout", 2: "stderr"}.get(fd, f"fd {fd}")
        COLLECTOR.chunk((id(self), fd), f"subprocess `{_describe(args)}` {name}", data)
        received(self, fd, data)

    protocol.pipe_data_received = pipe_data_received  # type: ignore[method-assign]

    issue = secrets.NetsapiensState.issue

    def issued(self: Any) -> dict[str, Any]:
        grant: dict[str, Any] = issue(self)
        secrets.runtime.extend([grant["access_token"], grant["refresh_token"]])
        return grant

    secrets.NetsapiensState.issue = issued  # type: ignore[method-assign]


def wrap_readouterr(readouterr: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(self: Any) -> Any:
        result = readouterr(self)
        COLLECTOR.text("capsys/capfd readouterr() out", result.out)
        COLLECTOR.text("capsys/capfd readouterr() err", result.err)
        return result

    return wrapped


def scan_test(nodeid: str, sections: Iterable[tuple[str, str]]) -> Findings:
    """This test's captured output and everything collected while it ran."""
    table = secrets.needles()
    found = Findings()
    for title, content in sections:
        if any(kind in title for kind in _SCANNED_SECTIONS):
            found.add(f"{nodeid}: {title}", content, table)
    for what, content in COLLECTOR.drain():
        found.add(f"{nodeid}: {what}", content, table)
    return found


def scan_files() -> Findings:
    """The DEVNULL-redirected daemon outputs, whole."""
    table = secrets.needles()
    found = Findings()
    for what, path in COLLECTOR.files:
        try:
            content = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        found.add(what, content, table)
    return found


def database_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                with open(path, "rb") as f:
                    head = f.read(16)
            except OSError:
                continue
            if head == b"SQLite format 3\x00" or path.name.endswith("-wal"):
                out.append(path)
    return out


def scan_database(path: Path) -> Findings:
    found = Findings()
    raw = path.read_bytes().decode("latin-1")  # byte for byte; secrets are looked for as UTF-8
    STATS.databases += 1
    STATS.database_bytes += len(raw)
    table = {k.encode().decode("latin-1"): v for k, v in secrets.needles().items()}
    found.add(f"{path} (bytes)", raw, table)
    return found
