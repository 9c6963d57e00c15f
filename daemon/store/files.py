"""The database file and its companions are private (0600): they hold client PII and the
subscription URLs with their secret part.

The file is created with that mode before SQLite opens it (SQLite gives `-wal` and `-shm` the
database file's mode), and wider modes found on existing files are tightened, with a log line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

FILE_MODE = 0o600
COMPANIONS = ("-wal", "-shm", "-journal")


def tighten(path: Path) -> None:
    """Make an existing regular file 0600 if group or others have any access to it. Anything
    else (a directory, a device such as /dev/null) is never touched: it is not ours, and
    opening it as a database fails on its own with a clear error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return
    if mode & 0o077:
        os.chmod(path, FILE_MODE)
        log.warning("store.permissions_tightened", path=str(path), was=f"{mode:04o}")


def private_file(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it, or tighten an existing
    one. A symlink is followed to the file it names, existing or not: created through a
    dangling link, the file would otherwise be left for SQLite to create with the umask's mode."""
    path = Path(os.path.realpath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        tighten(path)
        return
    try:
        os.fchmod(fd, FILE_MODE)  # a umask could have taken owner bits
    finally:
        os.close(fd)


def tighten_companions(path: Path) -> None:
    """`-wal`, `-shm`, `-journal` left over from a time the file was not private."""
    for suffix in COMPANIONS:
        tighten(path.with_name(path.name + suffix))
