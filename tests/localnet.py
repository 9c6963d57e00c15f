"""Loopback fixtures the service, event-path and reliability tests share: a free TCP port, and
the systemd end of sd_notify (a datagram socket the daemon writes READY=1, WATCHDOG=1... to)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotifySocket:
    """The systemd side of sd_notify: every datagram is kept (`seen`) as its fields."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []

    async def expect(self, key: str, value: str = "1", timeout: float = TIMEOUT) -> dict[str, str]:
        """The fields of the first datagram from now on that sets `key` to `value`."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                fields = dict(
                    line.split("=", 1) for line in data.decode().splitlines() if "=" in line
                )
                self.seen.append(fields)
                if fields.get(key) == value:
                    return fields

    def close(self) -> None:
        self.sock.close()


async def pump_json_lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    """Append each line of a subprocess's JSON log to `into` (a non-JSON line as `raw`)."""
    async for line in stream:
        try:
            into.append(json.loads(line))
        except ValueError:
            into.append({"raw": line.decode(errors="replace")})
