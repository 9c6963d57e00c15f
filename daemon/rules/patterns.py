"""Rule `match` patterns, compiled and run by the `regex` module with a time limit.

Why not `re`: a rule's pattern runs on text that anyone who can send an SMS chooses, and `re`
has no time limit. A pattern that backtracks (`^(\\s*\\w+\\s*)+[.!]?$`, written in good faith)
ran for more than 30 s on a 45-character message (found by probing). Matching runs on the
event loop, so the listener stopped meanwhile, and after the watchdog's restart the same
pending event stopped it again. `regex` reads the same syntax (its default VERSION0 is `re`'s),
avoids much of such backtracking by itself, and gives up on any search after `MATCH_TIMEOUT`:
that rule's action is then recorded `dead` with the reason, and the other rules and events go
on. The config check compiles with the same module, so what loads is what runs.
"""

from __future__ import annotations

import regex

__all__ = ["MATCH_TIMEOUT", "Pattern", "PatternError", "PatternTooSlow", "compile_pattern", "found"]

MATCH_TIMEOUT = 0.05  # seconds one search may take; a sane pattern needs microseconds
Pattern = regex.Pattern[str]
PatternError = regex.error


class PatternTooSlow(Exception):
    """A search ran past `MATCH_TIMEOUT`: the pattern backtracks on this text."""


def compile_pattern(source: str) -> Pattern:
    """`source` compiled; `PatternError` (or OverflowError, RecursionError) when it is not a
    pattern."""
    return regex.compile(source)


def found(pattern: Pattern, text: str) -> bool:
    """Whether `pattern` matches somewhere in `text`, or `PatternTooSlow`."""
    try:
        return pattern.search(text, timeout=MATCH_TIMEOUT) is not None
    except TimeoutError:
        raise PatternTooSlow(
            f"pattern {pattern.pattern[:60]!r} took over {MATCH_TIMEOUT:g} s on a text of "
            f"{len(text)} characters and was stopped (it backtracks: simplify it)"
        ) from None
