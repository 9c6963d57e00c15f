"""run-once's TTY progress line: one line, rewritten in place, every running job on it."""

import io

from daemon.commands.cmd_run_once import TtyProgress
from daemon.sync.runner import RunResult


def test_progress_line_rewrites_in_place_and_clears() -> None:
    out = io.StringIO()
    progress = TtyProgress(out)
    a, b = RunResult(job="blesta-clients"), RunResult(job="halo-tickets")
    a.pages, a.fetched = 1, 20
    progress(a)
    b.pages, b.fetched = 2, 100
    progress(b)
    a.pages, a.fetched = 3, 45
    progress(a)
    frames = out.getvalue().split("\r\x1b[K")
    assert frames[-1] == "blesta-clients 3p/45r · halo-tickets 2p/100r"
    assert "\n" not in out.getvalue()  # never scrolls
    progress.done()
    assert out.getvalue().endswith("\r\x1b[K")  # the summary starts on a clean line
