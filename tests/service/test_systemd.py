"""sd_notify against a datagram socket the test owns: the exact bytes systemd would read."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.systemd import MAX_STATUS_CHARS, Notifier, one_line, parse_address, watchdog_loop

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
WATCHDOG_60S = {"WATCHDOG_USEC": "60000000"}


class Receiver:
    """What systemd's end of NOTIFY_SOCKET sees."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def datagrams(self) -> list[bytes]:
        """Everything sent so far (unix datagrams are queued by the time sendto returns)."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got


def _receiver(address: str | bytes, env_value: str) -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return Receiver(sock, env_value)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that.
    path = Path(tempfile.mkdtemp(prefix="sdn-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def path_receiver(short_dir: Path) -> Iterator[Receiver]:
    path = str(short_dir / "notify")
    receiver = _receiver(path, path)
    yield receiver
    receiver.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"integration-daemon-test-{secrets.token_hex(8)}"
    receiver = _receiver("\0" + name, "@" + name)
    yield receiver
    receiver.sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_receiver")  # type: ignore[no-any-return]


async def settle() -> None:
    """Let every ready task run (no time passes on the fake clock)."""
    for _ in range(20):
        await anyio.sleep(0)


# -- the datagrams ---------------------------------------------------------------------------


def test_each_call_sends_its_exact_datagram(receiver: Receiver) -> None:
    notifier = Notifier.from_env(receiver.env(), clock=FakeClock(T0))
    assert notifier.enabled
    assert notifier.ready("listening on 127.0.0.1:8780, 7 jobs")
    assert notifier.status("syncing halo-tickets")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert receiver.datagrams() == [
        b"READY=1\nSTATUS=listening on 127.0.0.1:8780, 7 jobs",
        b"STATUS=syncing halo-tickets",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    notifier.close()


def test_reloading_carries_the_kernel_monotonic_clock(receiver: Receiver) -> None:
    notifier = Notifier.from_env(receiver.env(), clock=FakeClock(T0))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [datagram] = receiver.datagrams()
    first, second = datagram.split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC" and before <= int(value) <= after
    notifier.close()


def test_reloading_then_ready_is_the_reload_handshake(path_receiver: Receiver) -> None:
    notifier = Notifier(
        parse_address(path_receiver.env_value), clock=FakeClock(T0), monotonic=lambda: 123456789
    )
    notifier.reloading()
    notifier.ready("reloaded: 7 jobs, 4 rules")
    assert path_receiver.datagrams() == [
        b"RELOADING=1\nMONOTONIC_USEC=123456789",
        b"READY=1\nSTATUS=reloaded: 7 jobs, 4 rules",
    ]
    notifier.close()


def test_status_is_one_printable_line_of_bounded_length(path_receiver: Receiver) -> None:
    notifier = Notifier.from_env(path_receiver.env(), clock=FakeClock(T0))
    notifier.status("line one\nWATCHDOG=1\r\n\ttabbed\x00\x1b[31m red")
    notifier.status("x" * 1000)
    first, second = path_receiver.datagrams()
    # A newline would have started a forged WATCHDOG=1 assignment.
    assert first == b"STATUS=line one WATCHDOG=1 tabbed [31m red"
    text = second.decode().removeprefix("STATUS=")
    assert len(text) == MAX_STATUS_CHARS and text.endswith("…")
    notifier.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ok", "ok"), ("  a \n b  ", "a b"), ("\u2028x\u0085y", "x y"), ("", "")],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({}, clock=FakeClock(T0))
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    with capture_logs() as logs:
        results = [
            notifier.ready("up"),
            notifier.status("x"),
            notifier.reloading(),
            notifier.stopping(),
            notifier.watchdog(),
        ]
    assert results == [False] * 5
    assert logs == []
    assert notifier._sock is None  # not even a socket was opened


# -- the watchdog interval -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (WATCHDOG_60S, 30.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    path_receiver: Receiver, env: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier.from_env(path_receiver.env(**env), clock=FakeClock(T0))
    assert notifier.watchdog_interval() == expected


def test_no_watchdog_without_a_socket() -> None:
    assert Notifier.from_env(WATCHDOG_60S, clock=FakeClock(T0)).watchdog_interval() is None


# -- the watchdog loop -----------------------------------------------------------------------


async def test_watchdog_loop_pets_every_half_interval_only_while_healthy(
    path_receiver: Receiver,
) -> None:
    clock = FakeClock(T0)
    notifier = Notifier.from_env(path_receiver.env(**WATCHDOG_60S), clock=clock)
    health = {"ok": True}
    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: watchdog_loop(
                    notifier, clock=clock, healthy=lambda: health["ok"], task_status=task_status
                )
            )
            await settle()
            assert path_receiver.datagrams() == [b"WATCHDOG=1"]  # at once, then every 30 s
            assert notifier.last_watchdog == clock.monotonic()
            clock.advance(29.9)
            await settle()
            assert path_receiver.datagrams() == []
            clock.advance(0.1)
            await settle()
            assert path_receiver.datagrams() == [b"WATCHDOG=1"]

            health["ok"] = False  # e.g. the store writer's heartbeat went stale
            for _ in range(3):
                clock.advance(30)
                await settle()
            assert path_receiver.datagrams() == []

            health["ok"] = True
            clock.advance(30)
            await settle()
            assert path_receiver.datagrams() == [b"WATCHDOG=1"]
            tg.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert events == ["systemd.watchdog_withheld", "systemd.watchdog_resumed"]
    assert logs[0]["log_level"] == "error" and logs[0]["interval_s"] == 30.0
    notifier.close()


async def test_watchdog_loop_ends_at_once_when_systemd_wants_no_watchdog(
    path_receiver: Receiver,
) -> None:
    clock = FakeClock(T0)
    notifier = Notifier.from_env(path_receiver.env(), clock=clock)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: watchdog_loop(
                    notifier, clock=clock, healthy=lambda: True, task_status=task_status
                )
            )
    assert path_receiver.datagrams() == [] and clock.sleepers == 0


async def test_a_health_check_that_raises_withholds_the_watchdog(path_receiver: Receiver) -> None:
    clock = FakeClock(T0)
    notifier = Notifier.from_env(path_receiver.env(**WATCHDOG_60S), clock=clock)

    def broken() -> bool:
        raise RuntimeError("heartbeat lookup failed")

    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: watchdog_loop(notifier, clock=clock, healthy=broken))
            await settle()
            clock.advance(30)
            await settle()
            tg.cancel_scope.cancel()
    assert path_receiver.datagrams() == []
    assert [e["event"] for e in logs].count("systemd.watchdog_withheld") == 1
    notifier.close()


# -- failures never reach the service --------------------------------------------------------


def test_a_missing_socket_is_logged_once_and_never_raises(short_dir: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(short_dir / "gone")}, clock=FakeClock(T0))
    with capture_logs() as logs:
        assert not notifier.ready("up")
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert [(e["event"], e["reason"]) for e in logs] == [("systemd.notify_failed", "ENOENT")]
    assert logs[0]["message"] == "READY"
    assert notifier.last_watchdog is None
    notifier.close()


def test_a_receiver_that_went_away_is_logged_once(path_receiver: Receiver) -> None:
    notifier = Notifier.from_env(path_receiver.env(), clock=FakeClock(T0))
    assert notifier.status("first")
    path_receiver.sock.close()  # systemd restarted; the path is left without a listener
    with capture_logs() as logs:
        assert not notifier.status("second")
        assert not notifier.status("third")
    assert [(e["event"], e["reason"]) for e in logs] == [("systemd.notify_failed", "ECONNREFUSED")]
    notifier.close()


async def test_a_full_socket_drops_datagrams_without_blocking(path_receiver: Receiver) -> None:
    """Nobody reads the socket: sends fail with EAGAIN at once instead of blocking the loop."""
    notifier = Notifier.from_env(path_receiver.env(), clock=FakeClock(T0))
    with capture_logs() as logs, anyio.fail_after(5):
        results = [notifier.status(f"update {i}") for i in range(2000)]
    assert results[0] and not results[-1]
    assert [(e["event"], e["reason"]) for e in logs] == [("systemd.notify_failed", "EAGAIN")]
    assert len(path_receiver.datagrams()) == results.count(True)
    notifier.close()


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234", "@", "/" + "x" * 200])
def test_an_unusable_address_gives_a_no_op_notifier(value: str) -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": value}, clock=FakeClock(T0))
        assert not notifier.enabled and not notifier.ready("up")
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("systemd.notify_failed", "unsupported_address")
    ]


def test_a_socket_that_cannot_be_created_never_raises(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under a seccomp filter that refuses AF_UNIX."""

    def refused(*args: object, **kwargs: object) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    notifier = Notifier.from_env(path_receiver.env(), clock=FakeClock(T0))
    monkeypatch.setattr(socket, "socket", refused)
    with capture_logs() as logs:
        assert not notifier.ready("up")
        assert not notifier.watchdog()
    assert [(e["event"], e["reason"]) for e in logs] == [("systemd.notify_failed", "EPERM")]
