"""`daemon.crashpoints`: inert without the variable, SIGKILL at the named point (and hit), a
typo refused rather than silently never crashing, and every point placed in the code once."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.crashpoints import ENV, POINTS, parse

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (
    "from daemon.crashpoints import crashpoint\n"
    "for i in range(3):\n"
    "    crashpoint('after_parse')\n"
    "    print('passed', i, flush=True)\n"
)


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if spec is not None:
        env[ENV] = spec
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30
    )


def test_inert_without_the_variable_or_for_another_point() -> None:
    for spec in (None, "", "before_call"):
        done = _run(spec)
        assert done.returncode == 0 and done.stdout.count("passed") == 3, done.stderr


@pytest.mark.parametrize(("spec", "survived"), [("after_parse", 0), ("after_parse@2", 1)])
def test_sigkill_at_the_named_hit(spec: str, survived: int) -> None:
    done = _run(spec)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.count("passed") == survived


@pytest.mark.parametrize("spec", ["after_pasre", "after_parse@0", "after_parse@x"])
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="INTEGRATION_DAEMON_CRASH_AT"):
        parse(spec)
    done = _run(spec)
    assert done.returncode == 1 and "ValueError" in done.stderr


def test_every_point_is_placed_exactly_once() -> None:
    calls: dict[str, int] = {}
    for path in (ROOT / "daemon").rglob("*.py"):
        if path.name == "crashpoints.py":
            continue
        for name in re.findall(r'crashpoint\("([a-z_0-9]+)"\)', path.read_text()):
            calls[name] = calls.get(name, 0) + 1
    assert calls == dict.fromkeys(POINTS, 1)
