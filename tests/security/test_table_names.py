"""One table-name rule, in one place (`daemon.tablenames`), applied by config and store alike.

Config and store once had two validators: `select`, `key`, `values`, `order` and names with a
trailing newline passed `check-config` and then crashed `run-once` in the store.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.clock import FakeClock
from daemon.config import SyncJob, parse_settings
from daemon.errors import ConfigError, StoreError
from daemon.store import Store, validate_table_name
from daemon.tablenames import DAEMON_TABLES, RESERVED_NAMES, table_name_problem

UPSTREAMS = {"blesta": {"url": "https://b.example.com", "user": "u", "key": "k" * 12}}


def config_problems(*jobs: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {"upstreams": UPSTREAMS, "sync": list(jobs)},
            env={},
            credentials_dir=None,
            base_dir=Path("/nonexistent"),
        )
    return {p.path: p.message for p in info.value.problems}


def job(table: str, **extra: object) -> dict[str, object]:
    return {"name": "j", "table": table, "upstream": "blesta", "resource": "c", "every": "1h",
            **extra}  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["select", "key", "values", "order", "clients\n", "events", "sqlite_x", "contacts_table",
     "events_due", "schema_version", "Clients", "a-b"],
)  # fmt: skip
def test_config_refuses_what_the_store_refuses(name: str) -> None:
    found = config_problems(job(name))
    assert "invalid table name" in found["sync[0].table"]
    with pytest.raises(StoreError, match="invalid table name"):
        validate_table_name(name)


def test_the_config_error_names_the_key_and_reason() -> None:
    assert config_problems(job("select")) == {
        "sync[0].table": "invalid table name 'select': an SQL keyword"
    }
    defaulted = {"name": "events", "upstream": "blesta", "resource": "c", "every": "1h"}
    assert config_problems(defaulted) == {
        "sync[0].table": "invalid table name 'events': reserved for the daemon's own tables"
    }


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(alphabet=st.sampled_from("abcxyz_019-\n A;\"'"), max_size=70)
    | st.sampled_from(sorted(RESERVED_NAMES))
)
def test_one_rule(name: str) -> None:
    """For any name: the config accepts it exactly when the store does."""
    store_ok = table_name_problem(name) is None
    try:
        SyncJob(name="j", table=name, upstream="u", resource="r", every="1h")
    except ValueError:
        config_ok = False
    else:
        config_ok = True
    assert config_ok == store_ok
    try:
        validate_table_name(name)
    except StoreError:
        assert not store_ok
    else:
        assert store_ok


async def test_reserved_names_cover_the_schema(tmp_path: Path) -> None:
    """Every table and index the store creates is a reserved name (they share a namespace)."""
    db = tmp_path / "state.db"
    async with Store.open(db, clock=FakeClock(datetime(2025, 1, 1, tzinfo=UTC))):
        pass
    with sqlite3.connect(db) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    own = {n for n in names if not n.startswith("sqlite_")}
    assert own <= DAEMON_TABLES, own - DAEMON_TABLES


def test_a_table_may_not_take_a_report_tables_index_name() -> None:
    report = {"name": "rev", "table": "rev", "upstream": "blesta", "report": "r", "every": "1d"}
    found = config_problems(report, job("rev_period"))
    assert "period index of sync[0]" in found["sync[1].table"]


async def test_a_name_the_config_accepts_works_in_the_store(tmp_path: Path) -> None:
    settings_ = parse_settings(
        {"upstreams": UPSTREAMS, "sync": [job("selected_clients_2")]},
        env={},
        credentials_dir=None,
        base_dir=tmp_path,
    )
    clock = FakeClock(datetime(2025, 1, 1, tzinfo=UTC))
    async with Store.open(tmp_path / "state.db", clock=clock) as store:
        await store.ensure_record_table(settings_.sync[0].table)
