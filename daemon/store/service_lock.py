"""One `daemon run` per database, held for the service's life.

Why: at start the dispatcher releases every lease, taking them for a crashed process's leftovers
— nothing else can hold one then. A second service on the same file would break that: it would
claim the first one's in-flight events and send their SMS replies and tickets again. (Found by
probing: two services, three events, six tickets.) `run-once` and the inspection commands do
not take the lock; they never claim events.

An advisory `flock` on a companion file `<database>.lock`, never on the database itself: closing
any descriptor of the database file would drop SQLite's own POSIX locks. The kernel lets go of
the lock when the process ends, however it ends, so a SIGKILL leaves nothing to clean up. The
file keeps the holder's `host:pid:start`, for the message the next one gives.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.errors import DatabaseInUse, StoreError
from daemon.store.files import FILE_MODE
from daemon.store.runs import process_owner

__all__ = ["lock_path", "service_lock"]

_HOLDER_BYTES = 200


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextmanager
def service_lock(database: Path) -> Iterator[None]:
    """Hold the database's service lock, or raise `DatabaseInUse` naming the holder."""
    path = lock_path(database)
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the service lock: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, _HOLDER_BYTES, 0).decode("utf-8", "replace").strip()
            raise DatabaseInUse(
                f"{database}: another `daemon run` ({holder or 'process unknown'}) serves this "
                "database; one service per database — stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{process_owner()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
