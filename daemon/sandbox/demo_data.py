"""Deterministic demo data shared by every simulator.

Each helper is a pure function of an index (and an optional seed), so two runs of the sandbox or
of a test produce byte-identical upstream data, and different simulators describe the same demo
people when they use the same index (a Blesta client and a Halo user can share a phone number,
which is what the webhook → contact lookup needs). No global random state is touched.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

FIRST_NAMES = (
    "Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Dennis", "Frances", "Ken", "Radia",
    "Tim", "Hedy", "Donald", "Katherine", "John", "Sophie", "Guido", "Anita", "Brian", "Lynn",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Liskov", "Ritchie", "Allen",
    "Thompson", "Perlman", "Berners-Lee", "Lamarr", "Knuth", "Johnson", "McCarthy", "Wilson",
    "van Rossum", "Borg", "Kernighan", "Conway",
)  # fmt: skip
COMPANY_WORDS = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell",
    "Cyberdyne", "Soylent", "Wonka",
)  # fmt: skip
COMPANY_SUFFIXES = ("LLC", "Inc.", "Ltd", "GmbH", "& Sons", "Co.")
DEMO_EPOCH = datetime(2023, 1, 2, 9, 0, 0, tzinfo=UTC)


_MASK = (1 << 64) - 1


class DemoRandom(random.Random):
    """`random.Random`'s interface over SplitMix64: a generator is made per demo item, and
    seeding the Mersenne Twister cost more than the item itself (a 100k-client Blesta demo
    spent most of its start-up seeding). Our own algorithm, so the demo data never depends on
    the Python version."""

    def __init__(self, x: int = 0):
        self._state = x & _MASK

    def seed(self, a: Any = None, version: int = 2) -> None:
        self._state = int(a or 0) & _MASK

    def getstate(self) -> Any:
        return self._state

    def setstate(self, state: Any) -> None:
        self._state = int(state)

    def getrandbits(self, k: int) -> int:
        out, bits = 0, 0
        while bits < k:
            self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK
            z = self._state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
            out, bits = (out << 64) | (z ^ (z >> 31)), bits + 64
        return out >> (bits - k)

    def random(self) -> float:
        return self.getrandbits(53) / 9007199254740992.0


def rng(i: int, seed: int = 0, salt: str = "") -> random.Random:
    """A private generator for item `i`: stable across runs and Python versions."""
    digest = hashlib.sha256(f"{seed}:{salt}:{i}".encode()).digest()
    return DemoRandom(int.from_bytes(digest[:8], "big"))


def first_name(i: int, seed: int = 0) -> str:
    return FIRST_NAMES[(i + seed) % len(FIRST_NAMES)]


def last_name(i: int, seed: int = 0) -> str:
    return LAST_NAMES[(i * 7 + seed) % len(LAST_NAMES)]


def company(i: int, seed: int = 0) -> str:
    r = rng(i, seed, "company")
    return f"{r.choice(COMPANY_WORDS)} {r.choice(COMPANY_SUFFIXES)}"


def email(i: int, seed: int = 0, domain: str = "example.com") -> str:
    """Unique per index (the index is part of the local part)."""
    local = f"{first_name(i, seed)}.{last_name(i, seed)}".lower().replace(" ", "")
    return f"{local}{i}@{domain}"


def phone(i: int, seed: int = 0) -> str:
    """E.164, in the reserved +1555 range: `+1555` + 7 digits, unique per index below 10**7."""
    return f"+1555{(i * 7919 + seed * 104729) % 10_000_000:07d}"


def national_phone(i: int, seed: int = 0) -> str:
    """The same number as `phone(i)` written without a country code, as humans type it."""
    digits = phone(i, seed)[2:]
    return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"


def timestamp(i: int, seed: int = 0, *, spread_days: int = 700) -> datetime:
    """An aware UTC datetime after `DEMO_EPOCH`, roughly increasing with `i`."""
    r = rng(i, seed, "ts")
    days = min(spread_days, i) + r.random()
    return (DEMO_EPOCH + timedelta(days=days, seconds=r.randrange(3600))).replace(microsecond=0)


def blesta_time(when: datetime) -> str:
    """Blesta's output format: UTC `YYYY-MM-DD hh:mm:ss`."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def month_days(period: str) -> tuple[date, date]:
    """First and last day of a `YYYY-MM` period."""
    year, month = (int(p) for p in period.split("-"))
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


@dataclass(frozen=True)
class Person:
    """One demo person; `phone` is E.164, `display_phone` sometimes lacks the country code."""

    index: int
    first_name: str
    last_name: str
    email: str
    phone: str
    display_phone: str
    company: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def fake_person(i: int, seed: int = 0) -> Person:
    """Person `i`. Every third one writes the phone without a country code (real data does)."""
    e164 = phone(i, seed)
    return Person(
        index=i,
        first_name=first_name(i, seed),
        last_name=last_name(i, seed),
        email=email(i, seed),
        phone=e164,
        display_phone=national_phone(i, seed) if i % 3 == 2 else e164,
        company=company(i, seed),
    )
