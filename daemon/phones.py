"""Phone numbers as E.164, the one form contacts, rules and loop guards compare.

NetSapiens writes numbers however the PBX saw them: `15551230000` (country code, no plus),
`5551230000` (national), `+15551230000`, `sip:15551230000@pbx.example.com`, or an extension such
as `101`. Comparing those as strings would miss matches, so everything goes through `to_e164`,
which uses libphonenumber (`phonenumbers`) with the operator's `default_region` for numbers
written without a country code. Extensions and junk give None rather than a wrong number.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

_URI_SCHEME = re.compile(r"^(?:sips?|tel):", re.IGNORECASE)
_ALLOWED = re.compile(r"^[+\d\s().\-/]+$")
MIN_DIGITS = 7  # shorter than any real subscriber number: an extension or a short code


def _strip_uri(raw: str) -> str:
    """`sip:+1555...@host;user=phone` → `+1555...`; a bare value is returned unchanged."""
    text = _URI_SCHEME.sub("", raw.strip())
    text = text.split("@", 1)[0]
    return text.split(";", 1)[0].strip()


def _parse(text: str, region: str | None) -> str | None:
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    # is_possible (length/shape) rather than is_valid: test and fictional ranges such as
    # 555-0100 are not "valid" by the metadata, yet they are exactly what a PBX may carry.
    if not phonenumbers.is_possible_number(num):
        return None
    return str(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164))


def to_e164(raw: object, default_region: str = "US") -> str | None:
    """The E.164 form of `raw` (`+15551230000`), or None when it is not a phone number.

    Tries the number as written in `default_region` first (so `5551230000` and `15551230000`
    both work for US), then as an international number without its `+` (`447911123456`).
    """
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    return _text_to_e164(raw, default_region)


@functools.lru_cache(maxsize=8192)
def _text_to_e164(raw: str, default_region: str) -> str | None:
    # Cached: libphonenumber is most of parsing a webhook message, and the same numbers recur
    # (our own on every inbound message, a correspondent on each of theirs, a client's number
    # in every contacts rebuild). Pure, so a cache cannot change an answer.
    text = _strip_uri(raw)
    if not text or not _ALLOWED.match(text):
        return None  # letters: a SIP user name, "anonymous", "Restricted"...
    digits = re.sub(r"\D", "", text)
    if len(digits) < MIN_DIGITS:
        return None
    if text.startswith("+"):
        return _parse("+" + digits, None)
    if text.startswith("00"):
        return _parse("+" + digits[2:], None)
    region = (default_region or "US").upper()
    found = _parse(digits, region)
    if found is not None:
        return found
    return _parse("+" + digits, None)
