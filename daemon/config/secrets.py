"""Secret references: `"${NAME}"`, `{ file = "..." }`, `{ credential = "..." }`.

References are resolved on the raw TOML data before validation, so every field can use them
and the models only ever see plain values. The walk also notes which secret fields hold literal
values, because a file holding literal secrets must not be readable by anyone but its owner.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.errors import ConfigProblem

SECRET_KEYS = frozenset({"key", "password", "api_key", "app_secret", "client_secret", "secret"})
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_REF_KINDS = ("file", "credential")
# Secret-named keys count as secrets only in the sections that hold credentials: a Blesta
# `params = { key = ... }` or a ticket field called `key` is ordinary data.
_SECRET_SECTIONS = ("upstreams", "webhooks")


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

    def walk(self, node: Any, path: str, key: str | None) -> Any:
        if isinstance(node, dict):
            if path and _is_reference(node):
                return self.reference(node, path, key)
            return {k: self.walk(v, join(path, k), k) for k, v in node.items()}
        if isinstance(node, list):
            return [self.walk(v, join(path, i), key) for i, v in enumerate(node)]
        if isinstance(node, str):
            m = _ENV_REF.match(node)
            if m:
                value = self.env.get(m.group(1))
                if value is None:
                    return self.fail(path, f"environment variable {m.group(1)} is not set")
                if key in SECRET_KEYS:
                    self.out.secrets.append(value)
                return value
            if key in SECRET_KEYS and path.startswith(_SECRET_SECTIONS):
                self.out.literal_secrets.append(path)
        return node

    def reference(self, node: Mapping[str, Any], path: str, key: str | None) -> str:
        kind, target = next(iter(node.items()))
        if kind == "file":
            file = Path(target).expanduser()
            file = file if file.is_absolute() else self.base_dir / file
            where = f"secret file {str(file)!r}"
        else:
            if not self.credentials_dir:
                return self.fail(
                    path,
                    f"credential {target!r} needs $CREDENTIALS_DIRECTORY "
                    "(systemd LoadCredential=/SetCredential=), which is not set",
                )
            if not target or "/" in target or target in (".", ".."):
                return self.fail(path, f"invalid credential name {target!r}")
            file = Path(self.credentials_dir) / target
            where = f"credential {target!r} ({file})"
        try:
            value = file.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            return self.fail(path, f"{where} does not exist")
        except (OSError, UnicodeDecodeError) as exc:
            return self.fail(path, f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}")
        # File and credential contents are secret material wherever they are used.
        self.out.secrets.append(value)
        return value


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
