"""One `daemon run` per database: the service lock (the subprocess case is in
tests/service/test_run.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.errors import DatabaseInUse
from daemon.store.runs import process_owner
from daemon.store.service_lock import lock_path, service_lock


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path: Path) -> None:
    database = tmp_path / "data" / "state.db"
    with service_lock(database):
        lock = lock_path(database)
        assert lock.name == "state.db.lock" and not database.exists()
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
        with pytest.raises(DatabaseInUse, match="another `daemon run`") as refused:
            with service_lock(database):
                pass  # pragma: no cover - must not be reached
        assert process_owner() in str(refused.value)
    with service_lock(database):  # let go at exit: the next one gets it
        pass


def test_another_database_beside_it_has_its_own_lock(tmp_path: Path) -> None:
    with service_lock(tmp_path / "a.db"), service_lock(tmp_path / "b.db"):
        pass


def test_a_lock_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    lock_path(database).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="cannot open the service lock"):
        with service_lock(database):
            pass  # pragma: no cover
    assert not (tmp_path / "elsewhere").exists()
