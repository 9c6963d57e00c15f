"""Secret references: `"${NAME}"`, `{ file = "..." }`, `{ credential = "..." }`.

References are resolved on the raw TOML data before validation, so every field can use them
and the models only ever see plain values. The walk also notes which secret fields hold literal
values, because a file holding literal secrets must not be readable by anyone but its owner.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.values import expand_user
from daemon.errors import ConfigProblem

SECRET_KEYS = frozenset(
    {"key", "password", "api_key", "app_secret", "client_secret", "secret", "previous_secret"}
)
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_REF_KINDS = ("file", "credential")
# Secret-named keys count as secrets only in the sections that hold credentials: a Blesta
# `params = { key = ... }` or a ticket field called `key` is ordinary data.
_SECRET_SECTIONS = ("upstreams", "webhooks")
# A secret file is read whole, so it must be small and a regular file: `/dev/urandom` or a FIFO
# would hang the load. 64 KiB holds any key, token or certificate bundle.
MAX_SECRET_FILE_BYTES = 64 * 1024
# Deeper than any real configuration (rules' ticket tables are the deepest, at about six
# levels); a file nested hundreds deep is refused here, before anything recurses through it.
MAX_DEPTH = 32


def join(path: str, key: str | int) -> str:
    """`sync` + 2 → `sync[2]`; `sync[2]` + `every` → `sync[2].every`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@dataclass
class Resolved:
    """The outcome of resolving every reference in a file."""

    data: dict[str, Any]
    problems: list[ConfigProblem] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    secrets: list[str] = field(default_factory=list)
    literal_secrets: list[str] = field(default_factory=list)


def _is_reference(node: Mapping[str, Any]) -> bool:
    return (
        len(node) == 1
        and next(iter(node)) in _REF_KINDS
        and isinstance(next(iter(node.values())), str)
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Resolver:
    def __init__(self, env: Mapping[str, str], credentials_dir: str | None, base_dir: Path) -> None:
        self.env = env
        self.credentials_dir = credentials_dir
        self.base_dir = base_dir
        self.out = Resolved(data={})

    def fail(self, path: str, message: str) -> str:
        self.out.problems.append(ConfigProblem(path, message))
        self.out.failed.add(path)
        return ""

    def walk(self, node: Any, path: str, key: str | None, depth: int = 0) -> Any:
        if isinstance(node, dict | list) and depth >= MAX_DEPTH:
            self.fail(path or "(top level)", f"nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, dict):
            if path and _is_reference(node):
                return self.reference(node, path, key)
            return {k: self.walk(v, join(path, k), k, depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [self.walk(v, join(path, i), key, depth + 1) for i, v in enumerate(node)]
        if isinstance(node, str):
            m = _ENV_REF.match(node)
            if m:
                value = self.env.get(m.group(1))
                if value is None:
                    return self.fail(path, f"environment variable {m.group(1)} is not set")
                if not _is_utf8(value):
                    # POSIX hands undecodable bytes over as lone surrogates: no header, form
                    # or log line can carry them, so the service would fail at its first use.
                    return self.fail(path, f"environment variable {m.group(1)} is not UTF-8 text")
                if key in SECRET_KEYS:
                    if not value.strip():
                        return self.fail(path, f"environment variable {m.group(1)} is empty")
                    self.out.secrets.append(value)
                return value
            if key in SECRET_KEYS and path.startswith(_SECRET_SECTIONS) and node:
                self.out.literal_secrets.append(path)
        return node

    def reference(self, node: Mapping[str, Any], path: str, key: str | None) -> str:
        kind, target = next(iter(node.items()))
        if kind == "file":
            try:
                file = expand_user(target)
            except ValueError as exc:
                return self.fail(path, str(exc))
            file = file if file.is_absolute() else self.base_dir / file
            where = f"secret file {str(file)!r}"
        else:
            if not self.credentials_dir:
                return self.fail(
                    path,
                    f"credential {target!r} needs $CREDENTIALS_DIRECTORY "
                    "(systemd LoadCredential=/SetCredential=), which is not set",
                )
            if not target or "/" in target or "\x00" in target or target in (".", ".."):
                return self.fail(path, f"invalid credential name {target!r}")
            file = Path(self.credentials_dir) / target
            where = f"credential {target!r} ({file})"
        try:
            value = read_secret_file(file).rstrip("\r\n")
        except FileNotFoundError:
            return self.fail(path, f"{where} does not exist")
        except SecretFileError as exc:
            return self.fail(path, f"{where} {exc}")
        except OSError as exc:
            return self.fail(path, f"cannot read {where}: {exc.strerror or exc}")
        if not value.strip():
            return self.fail(path, f"{where} is empty")
        # File and credential contents are secret material wherever they are used.
        self.out.secrets.append(value)
        return value


class SecretFileError(Exception):
    """Why a secret file is refused (completes "secret file '/x' ...")."""


def read_secret_file(file: Path) -> str:
    """The text of a `{ file = ... }` / `{ credential = ... }` secret, read safely.

    Opened non-blocking (a FIFO cannot hang the load), then checked on the open descriptor (no
    race with a rename): a regular file, at most MAX_SECRET_FILE_BYTES, not writable by group
    or others (anyone who can write it can choose our credentials), UTF-8.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(file, flags)
    except ValueError:  # an embedded NUL
        raise SecretFileError("is not a valid path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError("is not a regular file")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SecretFileError(
                f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "chmod go-w it"
            )
        if st.st_size > MAX_SECRET_FILE_BYTES:
            raise SecretFileError(f"is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB")
        data = b""
        while len(data) <= MAX_SECRET_FILE_BYTES:
            chunk = os.read(fd, MAX_SECRET_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise SecretFileError(f"is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB")
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError("is not UTF-8 text") from None


def resolve_references(
    data: dict[str, Any],
    *,
    env: Mapping[str, str],
    credentials_dir: str | None,
    base_dir: Path,
) -> Resolved:
    """Replace every reference in `data` by its value; problems are collected, not raised.

    A failed reference becomes `""` and its path lands in `failed`, so the validation error
    that the placeholder would cause is not reported a second time.
    """
    resolver = _Resolver(env, credentials_dir, base_dir)
    resolver.out.data = resolver.walk(data, "", None)
    return resolver.out


def insecure_mode(path: Path) -> str | None:
    """Why `path` is too open for literal secrets (`mode 0644`), or None when it is private."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) & (stat.S_IRGRP | stat.S_IROTH):
        return f"mode {stat.S_IMODE(mode):04o}"
    return None
