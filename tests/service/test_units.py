"""The systemd units: what they must say, what systemd-analyze thinks of them, and whether the
real daemon survives what they impose.

systemd is not PID 1 here, so no unit can be started. The restrictions are kernel features,
though: `hardening.py` applies the unit's sandboxing options the way systemd does (namespaces,
read-only mounts, an unprivileged uid without capabilities, no_new_privs, the same seccomp
filters built from systemd's own syscall groups) and the tests run the real CLI under them.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from ctypes.util import find_library
from pathlib import Path
from typing import Any

import pytest

import daemon
from daemon.config.secrets import SECRET_KEYS

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SERVICE = UNITS / "integration-daemon.service"
SYNC = UNITS / "integration-daemon-sync.service"
TIMER = UNITS / "integration-daemon-sync.timer"
EXAMPLE = ROOT / "config" / "daemon.example.toml"
HARNESS = Path(__file__).with_name("hardening.py")
INSTALLED_DAEMON = "/opt/integration-daemon/venv/bin/daemon"
CREDENTIALS = "/etc/integration-daemon/credentials"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

# [Service] keys that describe the process's life rather than its sandbox; every other key of
# integration-daemon.service must be the same in integration-daemon-sync.service.
LIFECYCLE = {
    "Type",
    "NotifyAccess",
    "ExecStartPre",
    "ExecStart",
    "ExecReload",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "KillSignal",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "WatchdogSec",
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) in file order; keys repeat (LoadCredential=, SystemCallFilter=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a key=value line: {raw!r}"
        assert not value.endswith("\\"), "continuation lines are not used"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in parse_unit(path).get(section, []) if k == key]


def one(path: Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert len(found) == 1, f"{path.name} [{section}] {key}= appears {len(found)} times"
    return found[0]


def credential_names_of_example() -> set[str]:
    """The example's secrets are `${NAME}` references; under systemd each becomes
    `{ credential = "name" }` (the variable's name in lower case)."""
    data = tomllib.loads(EXAMPLE.read_text())
    names = set()

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif key in SECRET_KEYS:
            match = re.fullmatch(r"\$\{([A-Z0-9_]+)\}", node)
            assert match, f"the example writes the secret {key} as {node!r}, not a reference"
            names.add(match.group(1).lower())

    walk({"upstreams": data["upstreams"], "webhooks": data["webhooks"]}, "")
    return names


def example_for_systemd(state: Path) -> str:
    """The example config as docs/deploy.md tells operators to adapt it."""
    text = re.sub(
        r'"\$\{([A-Z0-9_]+)\}"',
        lambda m: f'{{ credential = "{m.group(1).lower()}" }}',
        EXAMPLE.read_text(),
    )
    return re.sub(r'(?m)^database = ".*"$', f'database = "{state / "state.db"}"', text)


# -- what the units say -----------------------------------------------------------------------


def test_the_service_is_a_notify_service_with_watchdog_reload_and_no_restart_on_bad_config():
    s = "Service"
    assert one(SERVICE, s, "Type") == "notify"
    assert one(SERVICE, s, "NotifyAccess") == "main"
    assert (
        one(SERVICE, s, "ExecStart")
        == f"{INSTALLED_DAEMON} run --config /etc/integration-daemon/daemon.toml"
    )
    assert one(SERVICE, s, "Restart") == "on-failure"
    assert "2" in one(SERVICE, s, "RestartPreventExitStatus").split()
    # RestartPreventExitStatus= covers the main process only: an ExecStartPre= that exits 2
    # on a bad config would be restarted forever (systemd issue #11868). `run` checks instead.
    assert values(SERVICE, s, "ExecStartPre") == []
    # Reload: check first, so `systemctl reload` fails on a bad config; then SIGHUP.
    assert values(SERVICE, s, "ExecReload") == [
        f"{INSTALLED_DAEMON} check-config --config /etc/integration-daemon/daemon.toml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert one(SERVICE, s, "WatchdogSec") == "60s"
    # A clean stop gets [daemon] shutdown_timeout (at most its 30s default) before SIGKILL.
    assert one(SERVICE, s, "KillSignal") == "SIGTERM"
    assert int(one(SERVICE, s, "TimeoutStopSec").removesuffix("s")) > 30
    assert one(SERVICE, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("unit", [SERVICE, SYNC], ids=lambda p: p.name)
def test_identity_files_and_secrets(unit: Path):
    s = "Service"
    assert one(unit, s, "DynamicUser") == "yes"
    assert one(unit, s, "User") == "integration-daemon"  # one dynamic uid for both units
    assert one(unit, s, "StateDirectory") == "integration-daemon"
    assert one(unit, s, "StateDirectoryMode") == "0700"
    assert one(unit, s, "ConfigurationDirectory") == "integration-daemon"
    assert one(unit, s, "UMask") == "0077"
    assert one(unit, s, "MemoryDenyWriteExecute") == "yes"
    loaded = dict(v.split(":", 1) for v in values(unit, s, "LoadCredential"))
    assert set(loaded) == credential_names_of_example()
    assert all(path == f"{CREDENTIALS}/{name}" for name, path in loaded.items())


def test_the_sync_unit_repeats_the_services_sandbox_exactly():
    service = [(k, v) for k, v in parse_unit(SERVICE)["Service"] if k not in LIFECYCLE]
    sync = [(k, v) for k, v in parse_unit(SYNC)["Service"] if k not in LIFECYCLE]
    assert sorted(sync) == sorted(service)
    assert one(SYNC, "Service", "Type") == "oneshot"
    assert (
        one(SYNC, "Service", "ExecStart")
        == f"{INSTALLED_DAEMON} run-once --config /etc/integration-daemon/daemon.toml"
    )
    assert "Install" not in parse_unit(SYNC)  # started by the timer, never enabled itself


def test_the_timer_runs_the_sync_every_quarter_hour_and_catches_up():
    t = "Timer"
    assert one(TIMER, t, "OnCalendar") == "*:0/15"
    assert one(TIMER, t, "Persistent") == "true"
    assert one(TIMER, t, "RandomizedDelaySec")
    assert one(TIMER, t, "Unit") == SYNC.name
    assert one(TIMER, "Install", "WantedBy") == "timers.target"


@pytest.mark.parametrize("command", ["check-config", "run-once"])
def test_an_invalid_config_exits_2_which_the_units_do_not_restart_on(tmp_path: Path, command: str):
    bad = tmp_path / "daemon.toml"
    bad.write_text('[daemon]\nlog_levl = "info"\n')
    done = subprocess.run(
        [sys.executable, "-m", "daemon", command, "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "daemon.log_levl" in done.stderr


# -- systemd-analyze ------------------------------------------------------------------------


@pytest.fixture
def installed_units(tmp_path: Path) -> list[Path]:
    """Copies whose ExecStart= names this virtualenv's `daemon`: verify checks that the
    binary exists, and /opt/integration-daemon/venv does not on a test machine."""
    here = Path(sys.executable).parent / "daemon"
    assert here.exists(), f"no console script at {here}"
    copies = []
    for unit in (SERVICE, SYNC, TIMER):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_DAEMON, str(here)))
        copies.append(copy)
    return copies


@needs_analyze
def test_systemd_analyze_verify_finds_nothing(installed_units: list[Path]):
    done = subprocess.run(
        [ANALYZE, "verify", *map(str, installed_units)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys and bad values; its warnings are the finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def exposure(unit: Path) -> float:
    assert ANALYZE
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", done.stdout
    )
    assert found, done.stdout + done.stderr
    assert done.returncode == 0, f"exposure {found.group(1)} is over the threshold"
    return float(found.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", [SERVICE, SYNC], ids=lambda p: p.name)
def test_security_exposure_is_at_most_2(unit: Path):
    assert exposure(unit) <= 2.0


# -- the real daemon under the units' restrictions ------------------------------------------

# Loads every module of the package (and OpenSSL), sends READY=1, runs the CLI, then looks
# for memory that is writable and executable at once: MemoryDenyWriteExecute= forbids it.
# With `--probe` it also checks that the restrictions are really in force.
DRIVER = r"""
import errno, importlib, json, mmap, os, pkgutil, socket, ssl, sys
import daemon
for info in pkgutil.walk_packages(daemon.__path__, "daemon."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
ssl.create_default_context()
from daemon.clock import SystemClock
from daemon.systemd import Notifier
from daemon.cli import main
probe = sys.argv[1] == "--probe"
result = {}
notifier = Notifier.from_env(clock=SystemClock())
result["notified"] = notifier.ready("hardened run")
notifier.close()
result["rc"] = main(sys.argv[2:])
result["wx"] = [l.strip() for l in open("/proc/self/maps") if {"w", "x"} <= set(l.split()[1])]

def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

if probe:
    fields = ("Uid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
    status = dict(l.rstrip("\n").split(":\t", 1) for l in open("/proc/self/status"))
    result["status"] = {k: status[k].split()[0] for k in fields}
    result["mmap_wx"] = attempt(
        lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
    result["netlink"] = attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
    result["nice"] = attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
    result["write_config_dir"] = attempt(lambda: open(os.environ["PROBE_READONLY"], "w"))
    result["write_tmp"] = attempt(lambda: open("/tmp/probe", "w"))
    result["proc_cpuinfo"] = os.path.exists("/proc/cpuinfo")
    result["dev"] = sorted(os.listdir("/dev"))
    with open(os.path.join(os.environ["STATE_DIRECTORY"], "umask-probe"), "w"):
        pass
with open(os.environ["PROBE_RESULT"], "w") as out:
    json.dump(result, out)
"""


def test_no_library_the_daemon_loads_maps_writable_executable_memory(tmp_path: Path):
    """Unrestricted, after a real sync (simulators, HTTP, SQLite): if a library wanted W+X
    memory it would show here; under MemoryDenyWriteExecute= it would fail or fall back."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps (not Linux)")
    env = {
        **os.environ,
        "PROBE_RESULT": str(tmp_path / "result.json"),
        "STATE_DIRECTORY": str(tmp_path),
    }
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            "--no-probe",
            "sandbox",
            "--run-once",
            "--dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["rc"] == 0, done.stdout + done.stderr
    assert result["wx"] == []


def _systemd_groups() -> dict[str, list[str]]:
    assert ANALYZE
    out = subprocess.run(
        [ANALYZE, "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("#"):
            break
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def allowed_syscalls(unit: Path) -> list[str]:
    """SystemCallFilter= as systemd resolves it: the allow-list (plus @default, which systemd
    always adds to one) minus every `~` entry."""
    groups = _systemd_groups()

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(member) for member in groups[item]))

    lines = values(unit, "Service", "SystemCallFilter")
    assert lines and not lines[0].startswith("~"), "the filter must start as an allow-list"
    allowed, denied = expand("@default"), set()
    for line in lines:
        items = line.removeprefix("~").split()
        target = denied if line.startswith("~") else allowed
        for item in items:
            target |= expand(item)
    return sorted(allowed - denied)


def _free_uid() -> int:
    for uid in range(61184, 65520):  # systemd's DynamicUser= range
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in the DynamicUser range")


def _why_no_harness() -> str | None:
    if sys.platform != "linux":
        return "the sandbox is made of Linux namespaces and seccomp"
    if os.geteuid() != 0:
        return "building the namespaces and dropping to a dynamic uid needs root, as systemd has"
    if ANALYZE is None:
        return "systemd-analyze is needed to expand SystemCallFilter=@system-service"
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    if find_library("seccomp") is None:
        return "libseccomp is not installed"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--user",
            "--map-root-user",
            "true",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"namespaces are not available here: {probe.stderr.strip()}"
    return None


class Hardened:
    """A directory laid out like the installed service, and a way to run in its sandbox."""

    def __init__(self, base: Path, notify_dir: Path) -> None:
        self.uid = _free_uid()
        self.base = base
        self.etc = base / "etc"  # ConfigurationDirectory: read-only, root's
        self.credentials = base / "credentials"  # $CREDENTIALS_DIRECTORY: the uid's, 0400
        self.state = base / "state"  # StateDirectory: the uid's, 0700, the only writable place
        base.mkdir()
        self.etc.mkdir()
        self.credentials.mkdir(mode=0o500)
        self.state.mkdir(mode=0o700)
        os.chown(self.etc, self.uid, self.uid)  # so only the read-only mount stops a write
        for name in credential_names_of_example():
            (self.credentials / name).write_text(f"hardened-{name}-0123456789abcdef\n")
            (self.credentials / name).chmod(0o400)
            os.chown(self.credentials / name, self.uid, self.uid)
        os.chown(self.credentials, self.uid, self.uid)
        os.chown(self.state, self.uid, self.uid)
        # The harness runs from the box, not from the checkout: a checkout in a private
        # directory (mktemp -d makes 0700 ones) cannot be read by the dynamic uid.
        self.harness = base / HARNESS.name
        shutil.copyfile(HARNESS, self.harness)
        self.harness.chmod(0o644)
        base.chmod(0o755)
        self.notify_path = str(notify_dir / "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        os.chmod(self.notify_path, 0o777)  # like /run/systemd/notify
        notify_dir.chmod(0o755)
        self.keep = [
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
            str(Path(daemon.__file__).resolve().parents[1]),
            str(base),
            str(notify_dir),
        ]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/",
            "USER": "integration-daemon",
            "LOGNAME": "integration-daemon",
            "CREDENTIALS_DIRECTORY": str(self.credentials),
            "STATE_DIRECTORY": str(self.state),
            "CONFIGURATION_DIRECTORY": str(self.etc),
            "NOTIFY_SOCKET": self.notify_path,
            "PROBE_RESULT": str(self.state / "result.json"),
            "PROBE_READONLY": str(self.etc / "probe"),
        }
        env.update(v.split("=", 1) for v in values(SERVICE, "Service", "Environment"))
        s = "Service"
        assert (
            one(SERVICE, s, "ProtectProc") == "invisible" and one(SERVICE, s, "ProcSubset") == "pid"
        )
        assert one(SERVICE, s, "RestrictNamespaces") == "yes"
        assert one(SERVICE, s, "CapabilityBoundingSet") == ""
        spec = {
            "uid": self.uid,
            "keep": self.keep,
            "writable": [str(self.state)],
            "private_tmp": one(SERVICE, s, "PrivateTmp") == "yes",
            "protect_home": one(SERVICE, s, "ProtectHome") == "yes",
            "private_devices": one(SERVICE, s, "PrivateDevices") == "yes",
            "proc_options": "hidepid=invisible,subset=pid",
            "protect_system_strict": one(SERVICE, s, "ProtectSystem") == "strict",
            "drop_capabilities": True,
            "no_new_privileges": one(SERVICE, s, "NoNewPrivileges") == "yes",
            "private_users": one(SERVICE, s, "PrivateUsers") == "yes",
            "umask": int(one(SERVICE, s, "UMask"), 8),
            "libseccomp": find_library("seccomp"),
            "memory_deny_write_execute": one(SERVICE, s, "MemoryDenyWriteExecute") == "yes",
            "address_families": [
                getattr(socket, name) for name in one(SERVICE, s, "RestrictAddressFamilies").split()
            ],
            "restrict_namespaces": True,
            "syscalls_allowed": allowed_syscalls(SERVICE),
            "syscall_errno": getattr(errno, one(SERVICE, s, "SystemCallErrorNumber")),
            "argv": argv,
            "env": env,
        }
        spec_path = self.base / "spec.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o644)
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                sys.executable,
                str(self.harness),
                "outer",
                str(spec_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def datagrams(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.notify.recv(4096))
            except BlockingIOError:
                return got


@pytest.fixture
def hardened(tmp_path: Path) -> Iterator[Hardened]:
    why = _why_no_harness()
    if why:
        pytest.skip(why)
    notify_dir = Path(tempfile.mkdtemp(prefix="idn-"))  # short: sun_path holds 107 bytes
    box = Hardened(tmp_path / "box", notify_dir)
    yield box
    box.notify.close()
    shutil.rmtree(notify_dir)


def test_check_config_reads_every_credential_under_the_units_restrictions(hardened: Hardened):
    """The ExecReload= check: the example, with its secrets as { credential = ... }, checked as
    the dynamic user inside the sandbox."""
    config = hardened.etc / "daemon.toml"
    config.write_text(example_for_systemd(hardened.state))
    config.chmod(0o644)
    done = hardened.run(
        [str(Path(sys.executable).parent / "daemon"), "check-config", "--config", str(config)]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hardened-" not in done.stdout + done.stderr  # the secrets stayed secret


def test_the_daemon_syncs_under_the_units_restrictions(hardened: Hardened):
    """A real sync (simulators on loopback, HTTP, SQLite in WAL mode, every module and OpenSSL
    loaded) as the dynamic user under every restriction the harness can apply."""
    done = hardened.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            "--probe",
            "sandbox",
            "--run-once",
            "--dir",
            str(hardened.state / "sandbox"),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((hardened.state / "result.json").read_text())
    assert result["rc"] == 0, done.stdout + done.stderr
    assert "ok" in done.stdout and "failed" not in done.stdout
    assert result["wx"] == []
    assert result["notified"] and hardened.datagrams() == [b"READY=1\nSTATUS=hardened run"]
    # The restrictions were in force, so the run above proves something:
    assert result["status"] == {
        "Uid": str(hardened.uid),
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapBnd": "0000000000000000",
        "NoNewPrivs": "1",
        "Seccomp": "2",
    }
    assert result["mmap_wx"] in ("EPERM", "EACCES")  # MemoryDenyWriteExecute=
    assert result["netlink"] == "EAFNOSUPPORT"  # RestrictAddressFamilies=
    assert result["nice"] == "EPERM"  # SystemCallFilter=~@resources
    assert result["write_config_dir"] == "EROFS"  # ProtectSystem=strict
    assert result["write_tmp"] == "allowed"  # PrivateTmp= gives a private, writable /tmp
    assert result["proc_cpuinfo"] is False  # ProcSubset=pid
    assert set(result["dev"]) <= {
        *("null", "zero", "full", "random", "urandom", "tty"),
        "pts",
        "ptmx",
        "shm",
        "fd",
        "stdin",
        "stdout",
        "stderr",
    }
    # UMask=0077: what the service creates is private.
    assert (hardened.state / "umask-probe").stat().st_mode & 0o777 == 0o600
    for created in (hardened.state / "sandbox").iterdir():
        assert created.stat().st_mode & 0o077 == 0, created
