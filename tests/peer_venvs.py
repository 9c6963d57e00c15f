"""Virtualenvs for peer clients (published packages other people wrote), built once and cached.

Peers pin conflicting dependencies (billomapy needs `requests==2.20.0`, blesta-sdk
`requests>=2.32.5`), so each gets its own virtualenv, and tests or benchmarks run a small driver
script with that virtualenv's python in a subprocess:

    python = peer_python("billomapy", ["billomapy==2.5.3"])
    subprocess.run([python, "driver.py", ...])

The virtualenv lives outside the repository, in
`$INTEGRATION_DAEMON_PEER_CACHE` (else `$XDG_CACHE_HOME/integration-daemon/peers`, else
`~/.cache/integration-daemon/peers`), under `<name>-<hash>` where the hash covers the
requirements and the base interpreter, so CI's fresh clone (and fresh virtualenv) reuses it on
the next run and a changed pin or Python gets a new one. A build happens in a temporary
directory renamed into place once pip succeeded, under a file lock, so concurrent test workers
neither collide nor see half a venv.
Standard library only: it must run before anything is installed.

Command line (prints the python path): `python tests/peer_venvs.py NAME REQUIREMENT...`
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

MARKER = "peer-venv.json"  # written last: a venv without it is incomplete


class PeerInstallError(RuntimeError):
    """pip could not install the requirements (no network, no matching wheel, a failed build).

    `output` holds the end of pip's output, for a skip reason or a failure message."""

    def __init__(self, name: str, requirements: Sequence[str], output: str):
        super().__init__(f"cannot install {name} ({' '.join(requirements)}): {output}")
        self.output = output


def cache_root() -> Path:
    """Where peer virtualenvs are kept (see the module docstring)."""
    explicit = os.environ.get("INTEGRATION_DAEMON_PEER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "integration-daemon" / "peers"


_PROBE = (
    "import os, platform, sys;"
    "print(os.path.realpath(getattr(sys, '_base_executable', sys.executable)),"
    " sys.implementation.cache_tag, platform.machine())"
)


def venv_key(requirements: Sequence[str], python: str = sys.executable) -> str:
    """A short hash of what makes two virtualenvs interchangeable: the requirements and the
    base interpreter (a venv made from inside a venv links the base one), so the fresh
    virtualenv CI makes for every run still finds the peers it built last time."""
    if python == sys.executable:
        base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        interpreter = f"{base} {sys.implementation.cache_tag} {platform.machine()}"
    else:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True)
        interpreter = probe.stdout.strip()
    spec = json.dumps({"requirements": sorted(requirements), "python": interpreter})
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if platform.system() == "Windows" else "bin/python")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _host_pip(python: str) -> list[str]:
    """`python -m pip` when that pip can install into another interpreter (`--python`, pip
    22.3+), else [] (the venv then gets its own pip)."""
    probe = _run([python, "-m", "pip", "--version"], 60)
    if probe.returncode != 0:
        return []
    try:
        major, minor = (int(p) for p in probe.stdout.split()[1].split(".")[:2])
    except (IndexError, ValueError):
        return []
    return [python, "-m", "pip"] if (major, minor) >= (22, 3) else []


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)  # the peer must not see our packages
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def peer_python(
    name: str,
    requirements: Sequence[str],
    *,
    python: str = sys.executable,
    root: Path | None = None,
    timeout: float = 900.0,
) -> Path:
    """The python of a virtualenv holding `requirements` (built on first use, then cached).

    Raises `PeerInstallError` when pip fails; the cache is left without a partial venv.
    """
    root = root or cache_root()
    key = venv_key(requirements, python)
    final = root / f"{name}-{key}"
    if (final / MARKER).is_file():
        return _python_in(final)
    with _locked(root / f".{name}-{key}.lock"):
        if (final / MARKER).is_file():  # another worker built it while we waited
            return _python_in(final)
        if final.exists():  # a crash left it without a marker
            shutil.rmtree(final)
        build = Path(tempfile.mkdtemp(prefix=f".{name}-{key}-", dir=root))
        try:
            host_pip = _host_pip(python)
            # the host's pip installs into a venv without its own (ensurepip costs seconds)
            bare = ["--without-pip"] if host_pip or not requirements else []
            made = _run([python, "-m", "venv", *bare, str(build)], timeout)
            if made.returncode != 0:
                raise PeerInstallError(name, requirements, (made.stderr or made.stdout)[-800:])
            if requirements:
                target = str(_python_in(build))
                pip = [*host_pip, "--python", target] if host_pip else [target, "-m", "pip"]
                installed = _run([*pip, "install", "--quiet", *requirements], timeout)
                if installed.returncode != 0:
                    output = (installed.stderr or installed.stdout).strip()
                    raise PeerInstallError(name, requirements, output[-800:])
            spec = {"name": name, "requirements": list(requirements), "python": python}
            (build / MARKER).write_text(json.dumps(spec, indent=2) + "\n")
            build.rename(final)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return _python_in(final)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(peer_python(argv[0], argv[1:]))
    except PeerInstallError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
