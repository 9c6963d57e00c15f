"""`daemon run` as a subprocess for the service tests: its JSON log collected as it arrives,
a test-owned NOTIFY_SOCKET, and the waits those tests need (bounded, never a bare sleep)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.localnet import NotifySocket, pump_json_lines

TIMEOUT = 30.0


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    notify: NotifySocket
    url: str
    log: list[dict[str, object]]

    async def healthz(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/healthz") as resp:
                return resp.status

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.log if e.get("event") == name]

    def reloads(self) -> list[dict[str, object]]:
        return [e for e in self.events("config.loaded") if e.get("reloaded")]

    async def wait_for(self, name: str) -> dict[str, object]:
        """The first `name` log event, once it is there; fails if the daemon exits first."""
        async with asyncio.timeout(TIMEOUT):
            while not self.events(name):
                if self.proc.returncode is not None:
                    raise AssertionError(f"the daemon exited {self.proc.returncode}: {self.log}")
                await asyncio.sleep(0.05)
        return self.events(name)[0]

    async def wait_exit(self) -> int:
        async with asyncio.timeout(TIMEOUT):
            return await self.proc.wait()


async def start_daemon(
    config: Path,
    notify_path: Path,
    port: int,
    *,
    watchdog: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Daemon:
    """`daemon run --config config`, notifying `notify_path` (with a 0.4 s watchdog unless
    `watchdog` is false), its listener on `port`."""
    notify = NotifySocket(notify_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), **(extra_env or {})}
    env.pop("WATCHDOG_PID", None)
    if watchdog:
        env["WATCHDOG_USEC"] = "400000"
    else:
        env.pop("WATCHDOG_USEC", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    log: list[dict[str, object]] = []
    assert proc.stdout is not None
    asyncio.get_running_loop().create_task(pump_json_lines(proc.stdout, log))
    return Daemon(proc, notify, f"http://127.0.0.1:{port}", log)
