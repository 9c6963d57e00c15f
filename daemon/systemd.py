"""sd_notify: tell systemd that we are ready, reloading, stopping, alive, and what we are doing.

The protocol (sd_notify(3)) is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket
named by `$NOTIFY_SOCKET` — an absolute path, or `@name` for an abstract socket. Without the
variable (not started by systemd, or `Type=` is not `notify`) every call is a no-op, so the
service calls the notifier unconditionally.

`service.py` builds one `Notifier` with `Notifier.from_env(clock=...)` and passes it on:

* `ready(status)` once the listener is bound and the database open (and again after a reload),
* `status(text)` whenever the one-line summary changes,
* `reloading()` when SIGHUP arrives, then `ready(...)` when the reload is done or refused,
* `stopping()` when shutdown begins,
* `watchdog_loop(...)` in the task group, which sends `WATCHDOG=1` every half `$WATCHDOG_USEC`
  while the given health check passes, and withholds it (so systemd restarts us) while not.

Sending never blocks and never raises: the socket is non-blocking, a datagram that cannot be
sent is dropped, and each kind of failure is logged once (`systemd.notify_failed`).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.clock import Clock
from daemon.errors import shorten

log = structlog.get_logger(__name__)

# `systemctl status` shows STATUS= on one line; longer text only wraps the terminal.
MAX_STATUS_CHARS = 200
# sockaddr_un.sun_path: a path needs its terminating NUL, an abstract name does not.
_SUN_PATH_BYTES = 108

Address = str | bytes


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: systemd compares MONOTONIC_USEC= with its own clock,
    so this is the kernel's clock, never the injected one."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def parse_address(value: str) -> Address | None:
    """`$NOTIFY_SOCKET` → a `sendto()` address: the path, or NUL + name for `@name`.

    None for anything else (a relative path, `vsock:...`, a name too long for sun_path)."""
    if value.startswith("/"):
        return value if len(os.fsencode(value)) < _SUN_PATH_BYTES else None
    if value.startswith("@") and len(value) > 1:
        abstract = b"\0" + os.fsencode(value[1:])
        return abstract if len(abstract) <= _SUN_PATH_BYTES else None
    return None


def one_line(text: str, limit: int = MAX_STATUS_CHARS) -> str:
    """`text` as one printable line of at most `limit` characters (an ellipsis marks a cut):
    a newline would end the STATUS= field and start a new, unintended assignment."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    flat = " ".join(printable.split())
    return shorten(flat, limit)


def _failure_kind(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Notifier:
    """One service's channel to systemd. Build it with `from_env`; a notifier without an
    address sends nothing and reports no watchdog."""

    def __init__(
        self,
        address: Address | None,
        *,
        clock: Clock,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        monotonic: Callable[[], int] = monotonic_usec,
    ) -> None:
        self.address = address
        self.clock = clock
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._monotonic = monotonic
        self._sock: socket.socket | None = None
        self._failures: set[str] = set()
        self.last_watchdog: float | None = None  # clock.monotonic() at the last WATCHDOG=1

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, clock: Clock) -> Notifier:
        """Bound to `$NOTIFY_SOCKET`, with the watchdog of `$WATCHDOG_USEC`/`$WATCHDOG_PID`;
        a no-op notifier when the socket is unset or unusable (logged once)."""
        raw = env.get("NOTIFY_SOCKET", "")
        address = parse_address(raw) if raw else None
        notifier = cls(
            address,
            clock=clock,
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
        )
        if raw and address is None:
            notifier._failed("unsupported_address", f"NOTIFY_SOCKET={raw!r}", "")
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.address is not None

    # -- the messages ------------------------------------------------------------------------

    def ready(self, status: str) -> bool:
        """Start-up (or a reload) is complete; `status` is the one-line summary."""
        return self._send(f"READY=1\nSTATUS={one_line(status)}")

    def status(self, text: str) -> bool:
        """Replace the summary `systemctl status` shows."""
        return self._send(f"STATUS={one_line(text)}")

    def reloading(self) -> bool:
        """A reload began; systemd waits for the next `ready()`."""
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={self._monotonic()}")

    def stopping(self) -> bool:
        """Shutdown began."""
        return self._send("STOPPING=1")

    def watchdog(self) -> bool:
        """Still alive. Prefer `watchdog_loop`, which sends this only while healthy."""
        sent = self._send("WATCHDOG=1")
        if sent:
            self.last_watchdog = self.clock.monotonic()
        return sent

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 messages (half of `$WATCHDOG_USEC`, as systemd
        advises), or None: no socket, no watchdog, or one meant for another process."""
        if self.address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket (later messages open a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- sending -----------------------------------------------------------------------------

    def _send(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:  # full buffer, systemd gone, socket refused: drop the message
            self._failed(_failure_kind(exc), message.partition("=")[0], str(exc))
            return False
        return True

    def _failed(self, kind: str, field: str, error: str) -> None:
        if kind in self._failures:
            return
        self._failures.add(kind)
        log.warning("systemd.notify_failed", reason=kind, message=field, error=error)


def _positive_int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    number = int(value)
    return number if number > 0 else None


async def watchdog_loop(
    notifier: Notifier,
    *,
    clock: Clock,
    healthy: Callable[[], bool],
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send WATCHDOG=1 every `notifier.watchdog_interval()` seconds of `clock` while
    `healthy()` is true; returns at once when systemd asked for no watchdog.

    An unhealthy turn sends nothing, so systemd kills and restarts the service once
    `WatchdogSec` passes without a message; the change is logged once each way
    (`systemd.watchdog_withheld`, `systemd.watchdog_resumed`). A health check that raises
    counts as unhealthy.
    """
    interval = notifier.watchdog_interval()
    task_status.started()
    if interval is None:
        return
    withheld = False
    while True:
        if _check(healthy):
            notifier.watchdog()
            if withheld:
                withheld = False
                log.info("systemd.watchdog_resumed")
        elif not withheld:
            withheld = True
            log.error("systemd.watchdog_withheld", interval_s=interval)
        await clock.sleep(interval)


def _check(healthy: Callable[[], bool]) -> bool:
    try:
        return bool(healthy())
    except Exception:  # a broken check must not end the loop; it withholds like a failed one
        log.exception("systemd.health_check_failed")
        return False
