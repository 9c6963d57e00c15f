"""Suite-wide: the leak scan of issue 18 (`tests/reliability/leaks.py` says what it reads).

Every test's captured output, and the output of every subprocess it started, is scanned at its
teardown for every test secret in every spelling (`tests/reliability/secrets.py`); a hit fails
that test's teardown with where it was. At the end of the session every SQLite file under
pytest's temporary directories is scanned the same way; a hit fails the session.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import leaks

_DATABASE_FINDINGS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    leaks.install()
    pytest.CaptureFixture.readouterr = leaks.wrap_readouterr(  # type: ignore[method-assign]
        pytest.CaptureFixture.readouterr
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "teardown":
        return
    found = leaks.scan_test(item.nodeid, report.sections)
    leaks.STATS.leaks += len(found.items)
    if found.items and report.outcome == "passed":
        report.outcome = "failed"
        report.longrepr = "a test secret leaked:\n" + found.report()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "workerinput", None) is not None:
        return
    found = leaks.scan_files()
    basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    for path in leaks.database_files(Path(basetemp)):
        try:
            found.items += leaks.scan_database(path).items
        except FileNotFoundError:
            # A test's connection closed since the listing (the collector finalising one a
            # `with sqlite3.connect(...)` left open): the last close checkpoints the WAL into
            # its database and deletes it, so that file is where its frames are now.
            if path.name.endswith("-wal"):
                found.items += leaks.scan_database(path.with_name(path.name[: -len("-wal")])).items
    leaks.STATS.leaks += len(found.items)
    if found.items:
        _DATABASE_FINDINGS.append(found.report())
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(leaks.STATS.line())
    for text in _DATABASE_FINDINGS:
        terminalreporter.section("leak scan: secrets on disk", red=True)
        terminalreporter.line(text)
