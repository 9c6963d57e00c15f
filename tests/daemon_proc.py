"""`daemon run` as a subprocess, for the service and reliability tests: its JSON log collected
as it arrives, a test-owned NOTIFY_SOCKET, and the waits those tests need (bounded, never a
bare sleep)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.localnet import NotifySocket, pump_json_lines

TIMEOUT = 30.0


@dataclass
class Daemon:
    """One `daemon run` process; `log` fills with its JSON lines as they come."""

    proc: asyncio.subprocess.Process
    notify: NotifySocket
    url: str = ""  # its listener, when the test knows it
    log: list[dict[str, Any]] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e.get("event") == name]

    def reloads(self) -> list[dict[str, Any]]:
        return [e for e in self.events("config.loaded") if e.get("reloaded")]

    def tracebacks(self) -> list[dict[str, Any]]:
        return [e for e in self.log if "Traceback" in json.dumps(e)]

    async def wait_for(self, name: str) -> dict[str, Any]:
        """The first `name` log event, once it is there; fails if the daemon exits first."""
        async with asyncio.timeout(TIMEOUT):
            while not self.events(name):
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"the daemon exited {self.proc.returncode} before {name}: {self.log}"
                    )
                await asyncio.sleep(0.02)
        return self.events(name)[0]

    async def wait_exit(self) -> int:
        """The exit code, once every line the process wrote is in `log`."""
        async with asyncio.timeout(TIMEOUT):
            code = await self.proc.wait()
            if self.pump is not None:
                await self.pump
        return code

    async def stop(self) -> int:
        """SIGTERM and the exit code (0 for a clean stop)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def healthz(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/healthz") as resp:
                return resp.status


async def spawn(config: Path, notify: NotifySocket, env: dict[str, str], url: str = "") -> Daemon:
    """`daemon run --config config` with exactly `env`, its output pumped into `log`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    daemon = Daemon(proc, notify, url)
    daemon.pump = asyncio.get_running_loop().create_task(pump_json_lines(proc.stdout, daemon.log))
    return daemon


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
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), **(extra_env or {})}
    env.pop("WATCHDOG_PID", None)
    if watchdog:
        env["WATCHDOG_USEC"] = "400000"
    else:
        env.pop("WATCHDOG_USEC", None)
    return await spawn(config, NotifySocket(notify_path), env, f"http://127.0.0.1:{port}")
