"""Secrets: never empty, and a `{ file = ... }` is a small private regular file, read safely.

`/dev/urandom` as a secret file used to hang `check-config`; a FIFO would hang it until someone
wrote to it; an empty variable sent blank credentials and failed at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.config.secrets import MAX_SECRET_FILE_BYTES
from daemon.errors import ConfigError
from tests.test_config import BASE, ENV


def load_with(tmp_path: Path, reference: str, env: dict[str, str] | None = None) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(BASE.replace('key = "${BLESTA_KEY}"', f"key = {reference}"))
    path.chmod(0o600)
    load_settings(path, env=ENV if env is None else env, credentials_dir=str(tmp_path))


def problem(tmp_path: Path, reference: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, reference, env)
    found = {p.path: p.message for p in info.value.problems}
    assert list(found) == ["upstreams.blesta.key"], found
    return found["upstreams.blesta.key"]


def test_empty_literal(tmp_path: Path) -> None:
    assert problem(tmp_path, '""') == "must not be empty"
    assert problem(tmp_path, '"   "') == "must not be empty"


def test_empty_environment_variable(tmp_path: Path) -> None:
    message = problem(tmp_path, '"${BLESTA_KEY}"', env={**ENV, "BLESTA_KEY": ""})
    assert message == "environment variable BLESTA_KEY is empty"
    message = problem(tmp_path, '"${BLESTA_KEY}"', env={**ENV, "BLESTA_KEY": " \n"})
    assert message == "environment variable BLESTA_KEY is empty"


def test_empty_variable_is_fine_for_a_plain_field(tmp_path: Path) -> None:
    text = BASE.replace('client_id = "c"\n', 'client_id = "c"\ntenant = "${T}"\n', 1)
    assert "${T}" in text
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    assert load_settings(path, env={**ENV, "T": ""}).upstream("halo").tenant == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("content", ["", "\n", "  \r\n"])
def test_empty_secret_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "k").write_text(content)
    (tmp_path / "k").chmod(0o600)
    assert problem(tmp_path, '{ file = "k" }').endswith("is empty")
    assert problem(tmp_path, '{ credential = "k" }').endswith("is empty")


def test_control_characters_in_a_secret(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("line-one\nline-two\n")
    assert "control characters" in problem(tmp_path, '{ file = "k" }')


def test_device_is_refused_without_reading(tmp_path: Path) -> None:
    assert problem(tmp_path, '{ file = "/dev/urandom" }').endswith("is not a regular file")
    assert problem(tmp_path, '{ file = "/dev/zero" }').endswith("is not a regular file")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert problem(tmp_path, '{ file = "fifo" }').endswith("is not a regular file")
    assert problem(tmp_path, '{ credential = "fifo" }').endswith("is not a regular file")


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert problem(tmp_path, '{ file = "d" }').endswith("is not a regular file")


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    assert problem(tmp_path, '{ file = "big" }').endswith("is larger than 64 KiB")
    (tmp_path / "ok").write_bytes(b"x" * MAX_SECRET_FILE_BYTES)
    load_with(tmp_path, '{ file = "ok" }')


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_other_writable_file_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "k").write_text("secret-value-123")
    (tmp_path / "k").chmod(mode)
    message = problem(tmp_path, '{ file = "k" }')
    assert f"writable by group or others (mode {mode:04o})" in message
    assert "secret-value-123" not in message


def test_readable_by_group_is_accepted(tmp_path: Path) -> None:
    # Reading is the operator's call (systemd credentials are 0400/0440); writing is not.
    (tmp_path / "k").write_text("secret-value-123")
    (tmp_path / "k").chmod(0o640)
    load_with(tmp_path, '{ file = "k" }')


def test_not_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"\xff\xfe\x00")
    assert problem(tmp_path, '{ file = "k" }').endswith("is not UTF-8 text")


def test_odd_paths_are_problems_not_crashes(tmp_path: Path) -> None:
    assert "home" in problem(tmp_path, '{ file = "~nosuchuser99/k" }')
    assert "not a valid path" in problem(tmp_path, '{ file = "a\\u0000b" }')
    assert "invalid credential name" in problem(tmp_path, '{ credential = "a\\u0000b" }')
