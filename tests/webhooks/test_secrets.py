"""WebhookSecrets: constant-time, both secrets compared every time, rotation by the clock."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.webhooks.secrets import WebhookSecrets

T0 = datetime(2025, 1, 2, 15, 0, tzinfo=UTC)
NEW, OLD = "new-secret-0123456789", "old-secret-9876543210"


@pytest.fixture
def compares(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


def test_current_only(compares: list[tuple[Any, Any]]) -> None:
    s = WebhookSecrets(NEW)
    assert s.matches(NEW, T0)
    assert not s.matches(OLD, T0)
    assert not s.matches("", T0)
    assert not s.matches(NEW + "x", T0)
    assert len(compares) == 8  # two per check, even with no previous secret


def test_previous_accepted_until_grace_ends(compares: list[tuple[Any, Any]]) -> None:
    s = WebhookSecrets.rotating(NEW, OLD, loaded_at=T0, grace=timedelta(hours=1))
    assert s.previous_until == T0 + timedelta(hours=1)
    assert s.matches(OLD, T0) and s.matches(NEW, T0)
    assert s.matches(OLD, T0 + timedelta(minutes=59, seconds=59))
    assert not s.matches(OLD, T0 + timedelta(hours=1))
    assert s.matches(NEW, T0 + timedelta(days=9))
    # the number of comparisons does not depend on which secret matched, or whether any did
    per_check = {len(compares) // 5}
    assert len(compares) == 10 and per_check == {2}


def test_same_or_empty_previous_is_no_rotation() -> None:
    assert WebhookSecrets.rotating(NEW, NEW, loaded_at=T0, grace=timedelta(1)).previous is None
    assert WebhookSecrets.rotating(NEW, None, loaded_at=T0, grace=timedelta(1)).previous is None
    assert WebhookSecrets.rotating(NEW, "", loaded_at=T0, grace=timedelta(1)).previous is None


@pytest.mark.parametrize("candidate", ["ü" * 20, "\ud800", "\x00" * 21, "%2F" * 7])
def test_any_text_is_compared_safely(candidate: str) -> None:
    assert not WebhookSecrets(NEW).matches(candidate, T0)


def test_secrets_stay_out_of_repr() -> None:
    s = WebhookSecrets.rotating(NEW, OLD, loaded_at=T0, grace=timedelta(hours=1))
    assert NEW not in repr(s) and OLD not in repr(s)


def test_invalid() -> None:
    with pytest.raises(ValueError):
        WebhookSecrets("")
    with pytest.raises(ValueError):
        WebhookSecrets(NEW, OLD)  # a previous secret without an end
