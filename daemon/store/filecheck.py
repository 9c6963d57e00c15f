"""Is the database file at its path still the one the store opened, and can it be written?

A deleted or renamed database keeps "working" through the open handle, and every write after
that is lost at the next start; a read-only file, directory or file system fails the next
checkpoint. `/healthz` asks these questions of the file itself, beside its write probe.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

Identity = tuple[int, int]  # (device, inode)


def identity(path: Path) -> Identity | None:
    """The file's (device, inode), to tell later whether the path still names it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _not_writable(path: Path, what: str, mode: int, access: int) -> str | None:
    """Why this process cannot (or should not) write `path`, or None.

    `os.access` answers for our user; root passes it whatever the mode, so a mode with no write
    bit at all (`chmod a-w`: what an operator does to freeze a file) is reported too.
    """
    if not os.access(path, access):
        return f"the {what} is not writable by this user (mode {stat.S_IMODE(mode):04o})"
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return f"the {what} is read-only (mode {stat.S_IMODE(mode):04o})"
    return None


def file_problems(path: Path, opened: Identity | None) -> list[str]:
    """What is wrong with the database file at `path` for a process that opened `opened`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [
            "the database file is gone (deleted or renamed): writes go to a file that will not "
            "be opened again"
        ]
    except OSError as exc:
        return [f"cannot stat the database file: {exc.strerror or exc}"]
    problems: list[str] = []
    if opened is not None and (st.st_dev, st.st_ino) != opened:
        problems.append(
            "the database file was replaced: the path names another file than the one open"
        )
    if why := _not_writable(path, "database file", st.st_mode, os.W_OK):
        problems.append(why)
    parent = path.parent
    try:
        dst = os.stat(parent)
        vfs = os.statvfs(parent)
    except OSError as exc:
        problems.append(f"cannot stat the database directory: {exc.strerror or exc}")
        return problems
    if why := _not_writable(parent, "database directory", dst.st_mode, os.W_OK | os.X_OK):
        problems.append(why)
    if vfs.f_flag & os.ST_RDONLY:
        problems.append("the database is on a read-only file system")
    return problems
