"""NetSapiens payloads → normalised `Event`s. Pure: no I/O, no clock.

NetSapiens posts untyped JSON arrays; the model is known only from the URL the subscription was
given (upstream-apis §5). Both the webhook listener and the backfiller (which reads the same
objects through the API) go through `parse_payload`, so a message seen both ways gets the same
`dedupe_key` and the inbox keeps it once.

Shape tolerance is deliberate: one bad element is reported in `ParseResult.rejected` and the rest
of the batch is kept, CDRs are read in both the v1 underscore form and the v2 `call-*` form, and
an unknown model becomes `netsapiens.<model>` rather than an error. Only a body that is not JSON
(or is JSON but neither an object nor an array) raises `PayloadError`.

No input makes it raise anything else: raw bodies go through `body.load_json` (depth, size,
NaN), an already-decoded element nested deeper than `MAX_ELEMENT_DEPTH` is rejected rather than
left to blow the stack when it is hashed or stored, and lone surrogates (which `\ud800` in
JSON produces and SQLite cannot bind) are replaced in every string of the element — a pass
made only when the body holds such an escape, or was decoded elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.canonical import may_hold_surrogates, repair_surrogates_in, sha256_hex
from daemon.clients.ns_wire import parse_ns_datetime
from daemon.phones import to_e164
from daemon.webhooks.body import DEFAULT_MAX_DEPTH, BodyError, load_json, nests_deeper
from daemon.webhooks.event import (
    SOURCE,
    Event,
    ParseResult,
    PayloadError,
    Rejected,
    canonical_json,
)

# How deep one element of a batch may nest (NetSapiens objects are flat; 2 levels at most).
MAX_ELEMENT_DEPTH = 32
UNLIMITED_ELEMENTS = 1 << 62

__all__ = ["MAX_ELEMENT_DEPTH", "parse_payload"]


class _Reject(Exception):
    """Internal: this element is unusable; the message is the reason."""


def _hash_key(model: str, obj: Mapping[str, Any]) -> str:
    try:
        digest = sha256_hex(canonical_json(obj))
    except ValueError:
        raise _Reject("element holds NaN or Infinity, which JSON cannot carry") from None
    return f"{SOURCE}:{model}:sha256:{digest}"


def _text(obj: Mapping[str, Any], *keys: str) -> str | None:
    """The first present, non-empty value among `keys`, as text."""
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if value.__class__ is str:  # the usual case, checked first: this runs ~10 times a message
            text = value.strip()
        elif isinstance(value, (dict, list)):
            continue
        else:
            text = str(value).strip()
        if text:
            return text
    return None


def _int(obj: Mapping[str, Any], *keys: str) -> int | None:
    text = _text(obj, *keys)
    if text is None:
        return None
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # not a number; "inf" (found by probing: a 500)
        return None


def _when(obj: Mapping[str, Any], *keys: str) -> datetime | None:
    for key in keys:
        parsed = parse_ns_datetime(obj.get(key))
        if parsed is not None:
            return parsed
    return None


def _number(value: str | None, region: str) -> str | None:
    return to_e164(value, region) if value else None


_OWN = object()  # `domain`/`user` not given: the object's own fields


class _Ctx:
    """What every model parser needs besides the object."""

    def __init__(self, model: str, region: str, raw_json: str | None = None):
        self.model = model
        self.region = region
        self.raw_json = raw_json  # the one element's own text (see `_element_text`)

    def key(self, obj: Mapping[str, Any], ident: str | None) -> str:
        return f"{SOURCE}:{self.model}:{ident}" if ident else _hash_key(self.model, obj)

    def event(
        self,
        obj: Mapping[str, Any],
        kind: str,
        ident: str | None,
        *,
        from_number: str | None = None,
        to_number: str | None = None,
        body: str | None = None,
        direction: str | None = None,
        session_id: str | None = None,
        occurred_at: datetime | None = None,
        duration: int | None = None,
        domain: Any = _OWN,
        user: Any = _OWN,
    ) -> Event:
        return Event.of(
            {
                "source": SOURCE,
                "kind": kind,
                "from_number": from_number,
                "to_number": to_number,
                "body": body,
                "direction": direction,
                "session_id": session_id,
                "domain": _text(obj, "domain") if domain is _OWN else domain,
                "user": _text(obj, "user") if user is _OWN else user,
                "occurred_at": occurred_at,
                "duration": duration,
                "dedupe_key": self.key(obj, ident),
                "raw": dict(obj),
                "raw_json": self.raw_json,
            }
        )


_DIRECTIONS = {"orig": "inbound", "term": "outbound"}


def _message(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    raw_direction = (_text(obj, "direction") or "").lower()
    if not raw_direction:
        raise _Reject("message has no direction")
    if raw_direction not in _DIRECTIONS:
        raise _Reject(f"message direction {raw_direction!r} is neither 'orig' nor 'term'")
    from_number = _text(obj, "from-number")
    if from_number is None and _text(obj, "from-user-id") is None:
        raise _Reject("message has no from-number")
    direction = _DIRECTIONS[raw_direction]
    inbound = direction == "inbound"
    return ctx.event(
        obj,
        "message.received" if inbound else "message.sent",
        _text(obj, "id"),
        from_number=_number(from_number, ctx.region),
        to_number=_number(_text(obj, "dialed", "terminating-number", "destination"), ctx.region),
        body=obj["text"] if isinstance(obj.get("text"), str) else _text(obj, "text"),
        direction=direction,
        session_id=_text(obj, "messagesession-id"),
        user=_text(obj, "terminating-user-id", "user")
        if inbound
        else _text(obj, "from-user-id", "user"),
        occurred_at=_when(obj, "timestamp", "datetime"),
    )


_MISSED_WORDS = ("miss", "no answer", "noanswer", "not answered", "unanswered", "cancel")


def _cdr(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    # v2 hyphenated keys first, then the v1 underscore keys of the PBX README example.
    orig_callid = _text(obj, "call-orig-call-id", "orig_callid")
    term_callid = _text(obj, "call-term-call-id", "term_callid")
    # The call-id pair names one call leg in both the v1 and v2 shapes, so a CDR posted in one
    # shape and read back through the API in the other still gets the same dedupe key.
    if orig_callid or term_callid:
        ident: str | None = f"{orig_callid or ''}+{term_callid or ''}"
    else:
        ident = _text(obj, "cdr-id", "id", "call-id", "cdr_id")
    caller = _text(
        obj, "call-orig-caller-id", "call-orig-from-user", "orig_from_user", "orig_from_uri"
    )
    callee = _text(
        obj,
        "call-dialed-number",
        "call-orig-to-user",
        "call-term-user",
        "orig_to_user",
        "term_to_user",
        "orig_req_user",
    )
    if caller is None and callee is None:
        raise _Reject("cdr has neither a caller nor a callee")
    talk = _int(obj, "call-talking-duration-seconds", "call-total-duration-seconds", "duration")
    disposition = _text(obj, "call-disposition", "release_text", "call-disposition-reason") or ""
    answer_keys = ("call-answer-datetime", "time_answer", "answer_time")
    answer_known = any(k in obj for k in answer_keys)
    answered_at = _when(obj, *answer_keys)
    missed = (
        any(w in disposition.lower() for w in _MISSED_WORDS)
        or (answer_known and answered_at is None)
        or talk == 0
    )
    raw_direction = (_text(obj, "call-direction", "direction") or "").lower()
    direction = (
        "inbound"
        if raw_direction.startswith(("in", "received"))
        else "outbound"
        if raw_direction.startswith("out")
        else None
    )
    return ctx.event(
        obj,
        "call.missed" if missed else "call.completed",
        ident,
        from_number=_number(caller, ctx.region),
        to_number=_number(callee, ctx.region),
        direction=direction,
        session_id=orig_callid,
        domain=_text(
            obj, "domain", "call-orig-domain", "call-term-domain", "term_domain", "orig_domain"
        ),
        user=_text(obj, "call-term-user", "call-orig-user", "term_user", "orig_user", "user"),
        occurred_at=_when(
            obj, "call-start-datetime", "batch_tim_beg", "time_start", "call-batch-start-datetime"
        ),
        duration=talk,
    )


def _call(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    call_id = _text(obj, "call-orig-call-id", "call-session-id", "orig_callid", "call-id")
    if call_id is None:
        raise _Reject("call has no call-orig-call-id or call-session-id")
    if (_text(obj, "remove") or "").lower() in ("yes", "true", "1"):
        kind, state = "call.ended", "ended"
    elif _when(obj, "call-answer-datetime") is not None:
        kind, state = "call.answered", "answered"
    else:
        kind, state = "call.ringing", "ringing"
    return ctx.event(
        obj,
        kind,
        f"{call_id}:{state}",
        from_number=_number(
            _text(obj, "caller-id-number", "call-orig-caller-id", "call-orig-user"), ctx.region
        ),
        to_number=_number(_text(obj, "call-dialed-number", "call-term-user"), ctx.region),
        session_id=call_id,
        domain=_text(obj, "call-orig-domain", "call-term-domain", "domain"),
        user=_text(obj, "call-term-user", "call-orig-user", "user"),
        occurred_at=_when(obj, "call-answer-datetime", "call-start-datetime"),
    )


def _voicemail(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    filename = _text(obj, "filename", "id")
    if filename is None:
        raise _Reject("voicemail has no filename")
    domain, user = _text(obj, "domain"), _text(obj, "user")
    ident = ":".join(p for p in (domain, user, filename) if p)
    transcription = obj.get("transcription")
    return ctx.event(
        obj,
        "voicemail.received",
        ident,
        from_number=_number(
            _text(obj, "voicemail-from-caller-id-number", "voicemail-from-user"), ctx.region
        ),
        to_number=None,
        body=transcription if isinstance(transcription, str) and transcription else None,
        direction="inbound",
        occurred_at=_when(obj, "recorded-datetime", "created-datetime"),
        duration=_int(obj, "file-duration-seconds"),
    )


def _messagesession(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    sid = _text(obj, "messagesession-id")
    if sid is None:
        raise _Reject("messagesession has no messagesession-id")
    last = _text(obj, "messagesession-last-datetime")
    return ctx.event(
        obj,
        "messagesession.updated",
        f"{sid}:{last}" if last else None,
        from_number=_number(_text(obj, "messagesession-last-sender"), ctx.region),
        to_number=_number(_text(obj, "messagesession-sms-number"), ctx.region),
        body=_text(obj, "messagesession-last-message"),
        session_id=sid,
        occurred_at=_when(obj, "messagesession-last-datetime"),
    )


def _other(obj: Mapping[str, Any], ctx: _Ctx) -> Event:
    return ctx.event(obj, f"{SOURCE}.{ctx.model}", _text(obj, "id"))


_PARSERS: dict[str, Callable[[Mapping[str, Any], _Ctx], Event]] = {
    "message": _message,
    "cdr": _cdr,
    "call": _call,
    "voicemail": _voicemail,
    "messagesession": _messagesession,
}


@dataclass(slots=True)
class _Loaded:
    """The elements of a body, and what is known of them: whether their depth is bounded
    (raw input goes through `load_json`, whose depth cap covers every element), whether their
    strings may hold lone surrogates (decoded input always may), and the text of the one
    element, when the body is one object (the usual webhook)."""

    items: list[Any]
    bounded: bool
    clean: bool
    text: str | None


def _element_text(raw: bytes, items: list[Any]) -> str | None:
    """The JSON text of the body's only element, cut from `raw`, or None.

    JSON's grammar makes the cut exact: a body that parsed as `[`, one object and `]` (or as
    one object) holds that object's text between its outer brackets, once the whitespace JSON
    allows is stripped. Only for a body without surrogate escapes (the caller checks), so the
    text decodes to what the parsed element holds."""
    if len(items) != 1 or not isinstance(items[0], dict):
        return None
    text = raw.strip()
    if text.startswith(b"["):
        text = text[1:-1].strip()
    return text.decode("utf-8") if text.startswith(b"{") else None


def _load(body: Any, max_depth: int, max_elements: int) -> _Loaded:
    if not isinstance(body, (bytes, bytearray, memoryview, str)):
        return _Loaded(_items(body), bounded=False, clean=False, text=None)
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        decoded = load_json(raw, max_depth=max_depth, max_elements=max_elements)
    except BodyError as exc:
        raise PayloadError(exc.reason, exc.kind) from None
    items = _items(decoded)
    clean = not may_hold_surrogates(raw)
    return _Loaded(
        items,
        bounded=max_depth <= MAX_ELEMENT_DEPTH + 1,  # the array itself is one level
        clean=clean,
        text=_element_text(raw, items) if clean else None,
    )


def _items(body: Any) -> list[Any]:
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return body
    raise PayloadError(
        f"body is JSON {type(body).__name__}, not an object or an array", "not an array"
    )


def parse_payload(
    model: str,
    body: Any,
    *,
    default_region: str = "US",
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = UNLIMITED_ELEMENTS,
) -> ParseResult:
    """Events from one delivery (or one API page) of `model` objects.

    `body` is raw bytes/text or already-decoded JSON: an array of objects or one object.
    `max_depth` and `max_elements` bound raw input (see `body.load_json`); by default a body's
    size is left to the caller, who read it."""
    loaded = _load(body, max_depth, max_elements)
    name = (model or "").strip().lower()
    ctx = _Ctx(name, default_region, loaded.text)
    parser = _PARSERS.get(name, _other)
    events: list[Event] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(loaded.items):
        if not isinstance(item, dict):
            rejected.append(Rejected(index, f"element is {type(item).__name__}, not an object"))
            continue
        if not loaded.bounded and nests_deeper(item, MAX_ELEMENT_DEPTH):
            rejected.append(Rejected(index, f"element nests deeper than {MAX_ELEMENT_DEPTH}"))
            continue
        if not loaded.clean:
            item = repair_surrogates_in(item)
        try:
            events.append(parser(item, ctx))
        except _Reject as exc:
            rejected.append(Rejected(index, str(exc)))
    return ParseResult(events, rejected)
