"""parse_payload over every payload shape in upstream-apis §5, and phone normalisation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.canonical import canonical_json
from daemon.phones import to_e164
from daemon.webhooks.event import Event, ParseResult, PayloadError, body_hash
from daemon.webhooks.events import parse_payload

SID = "s" * 40
INBOUND = {
    "id": "a1",
    "timestamp": "2025-01-02T15:04:05+00:00",
    "type": "sms",
    "domain": "acme",
    "direction": "orig",
    "from-number": "15551230000",
    "dialed": "15559870000",
    "text": "balance?",
    "terminating-user-id": "101",
    "terminating-number": "15559870000",
    "status": "received",
    "messagesession-id": SID,
}
OUTBOUND = {
    **INBOUND,
    "id": "b2",
    "direction": "term",
    "from-number": "15559870000",
    "from-user-id": "101",
    "dialed": "5551230000",
    "text": "Your balance is $0",
}
CDR_V1 = {
    "object": "cdr",
    "action": "INSERT",
    "orig_callid": "abc@1.2.3.4",
    "orig_from_user": "15551230000",
    "orig_from_name": "Caller",
    "orig_to_user": "15559870000",
    "by_action": "",
    "term_callid": "def@5.6.7.8",
    "term_domain": "acme",
    "batch_tim_beg": "2025-01-02 15:00:00",
    "duration": "42",
    "release_text": "Orig: Bye",
    "hostname": "core1",
}
CDR_V2 = {
    "cdr-id": "cdr-77",
    "domain": "acme",
    "call-orig-call-id": "o1",
    "call-term-call-id": "t1",
    "call-orig-caller-id": "15551230000",
    "call-orig-user": "15551230000",
    "call-term-user": "101",
    "call-dialed-number": "15559870000",
    "call-direction": "Inbound",
    "call-start-datetime": "2025-01-02T15:00:00+00:00",
    "call-answer-datetime": "2025-01-02T15:00:05+00:00",
    "call-disconnect-datetime": "2025-01-02T15:01:05+00:00",
    "call-total-duration-seconds": "65",
    "call-talking-duration-seconds": "60",
    "call-disposition": "Answered",
}
CALL = {
    "core-server": "core1",
    "call-session-id": "sess1",
    "call-orig-call-id": "orig-1",
    "call-orig-user": "15551230000",
    "call-orig-domain": "acme",
    "caller-id-number": "15551230000",
    "call-dialed-number": "15559870000",
    "call-term-user": "101",
    "call-start-datetime": "2025-01-02 15:00:00",
}
VOICEMAIL = {
    "filename": "vm-20250102-1.wav",
    "file-duration-seconds": 17,
    "file-access-url": "https://pbx/vm.wav",
    "created-datetime": "2025-01-02 15:10:00",
    "voicemail-from-name": "Caller",
    "voicemail-from-user": "15551230000",
    "voicemail-from-caller-id-number": "15551230000",
    "recorded-datetime": "2025-01-02 15:09:40",
    "domain": "acme",
    "user": "101",
}
SESSION = {
    "user": "101",
    "domain": "acme",
    "messagesession-id": SID,
    "messagesession-remote": "15551230000",
    "messagesession-sms-number": "15559870000",
    "messagesession-last-datetime": "2025-01-02T15:04:05+00:00",
    "messagesession-last-message": "balance?",
    "messagesession-last-sender": "15551230000",
    "messagesession-type": "sms",
}


def one(model: str, obj: object) -> Event:
    result = parse_payload(model, json.dumps([obj]))
    assert result.rejected == []
    assert len(result.events) == 1
    return result.events[0]


def test_inbound_message() -> None:
    e = one("message", INBOUND)
    assert (e.source, e.kind, e.direction) == ("netsapiens", "message.received", "inbound")
    assert (e.from_number, e.to_number, e.body) == ("+15551230000", "+15559870000", "balance?")
    assert (e.session_id, e.domain, e.user) == (SID, "acme", "101")
    assert e.occurred_at == datetime(2025, 1, 2, 15, 4, 5, tzinfo=UTC)
    assert e.dedupe_key == "netsapiens:message:a1"
    ctx = e.as_context()
    assert ctx["kind"] == "message.received" and ctx["from"] == "+15551230000"
    assert ctx["occurred_at"] == "2025-01-02T15:04:05+00:00"
    assert ctx["raw"]["text"] == "balance?"


def test_outbound_message() -> None:
    e = one("message", OUTBOUND)
    assert (e.kind, e.direction) == ("message.sent", "outbound")
    assert (e.from_number, e.to_number, e.user) == ("+15559870000", "+15551230000", "101")


def test_event_json_round_trip() -> None:
    e = one("message", INBOUND)
    assert Event.from_json(e.to_json()) == e


def test_cdr_v2_completed() -> None:
    e = one("cdr", CDR_V2)
    assert e.kind == "call.completed"
    assert (e.from_number, e.to_number, e.direction) == ("+15551230000", "+15559870000", "inbound")
    assert e.duration == 60 and e.dedupe_key == "netsapiens:cdr:o1+t1"
    assert e.occurred_at == datetime(2025, 1, 2, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "element"),
    [
        ("cdr", {**CDR_V2, "call-total-duration-seconds": "inf",
                 "call-talking-duration-seconds": "-Infinity"}),
        ("voicemail", {**VOICEMAIL, "file-duration-seconds": "Infinity"}),
        ("cdr", {**CDR_V2, "call-talking-duration-seconds": "1e999"}),
    ],
)  # fmt: skip
def test_a_duration_of_infinity_is_unknown_not_an_overflow(
    model: str, element: dict[str, Any]
) -> None:
    """Found by probing: `int(float("inf"))` raised OverflowError out of the parser; the
    listener answered 500 and stored none of the delivery's good events."""
    e = one(model, element)
    assert e.duration is None


def test_cdr_v1_underscore_keys() -> None:
    e = one("cdr", CDR_V1)
    assert e.kind == "call.completed"
    assert (e.from_number, e.to_number, e.duration) == ("+15551230000", "+15559870000", 42)
    assert e.dedupe_key == "netsapiens:cdr:abc@1.2.3.4+def@5.6.7.8"
    assert e.occurred_at == datetime(2025, 1, 2, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "change",
    [
        {"call-answer-datetime": ""},
        {"call-answer-datetime": "0000-00-00 00:00:00"},
        {"call-talking-duration-seconds": "0"},
        {"call-disposition": "Missed"},
    ],
)
def test_cdr_missed(change: dict[str, str]) -> None:
    assert one("cdr", {**CDR_V2, **change}).kind == "call.missed"


def test_cdr_key_is_shape_independent() -> None:
    v1 = {**CDR_V1, "orig_callid": "o1", "term_callid": "t1"}
    assert one("cdr", v1).dedupe_key == one("cdr", CDR_V2).dedupe_key
    no_callids = {k: v for k, v in CDR_V2.items() if not k.endswith("call-id")}
    assert one("cdr", no_callids).dedupe_key == "netsapiens:cdr:cdr-77"


def test_cdr_v1_zero_duration_is_missed() -> None:
    assert one("cdr", {**CDR_V1, "duration": "0"}).kind == "call.missed"


def test_call_states() -> None:
    ringing = one("call", CALL)
    answered = one("call", {**CALL, "call-answer-datetime": "2025-01-02 15:00:04"})
    ended = one("call", {**CALL, "remove": "yes"})
    assert [e.kind for e in (ringing, answered, ended)] == [
        "call.ringing",
        "call.answered",
        "call.ended",
    ]
    assert len({ringing.dedupe_key, answered.dedupe_key, ended.dedupe_key}) == 3
    assert ringing.from_number == "+15551230000" and ringing.session_id == "orig-1"


def test_voicemail_without_transcription() -> None:
    e = one("voicemail", VOICEMAIL)
    assert e.kind == "voicemail.received" and e.body is None
    assert e.from_number == "+15551230000" and e.duration == 17
    assert e.dedupe_key == "netsapiens:voicemail:acme:101:vm-20250102-1.wav"
    with_text = one("voicemail", {**VOICEMAIL, "transcription": "call me back"})
    assert with_text.body == "call me back"


def test_messagesession() -> None:
    e = one("messagesession", SESSION)
    assert e.kind == "messagesession.updated" and e.session_id == SID
    assert e.body == "balance?" and e.from_number == "+15551230000"


def test_unknown_model_is_kept_raw() -> None:
    e = one("presence", {"user": "101", "presence": "open"})
    assert e.kind == "netsapiens.presence" and e.raw == {"user": "101", "presence": "open"}
    assert e.dedupe_key.startswith("netsapiens:presence:sha256:")
    assert one("presence", {"presence": "open", "user": "101"}).dedupe_key == e.dedupe_key


def test_lone_object_accepted() -> None:
    result = parse_payload("message", json.dumps(INBOUND).encode())
    assert [e.dedupe_key for e in result.events] == ["netsapiens:message:a1"]


def test_bad_elements_rejected_rest_kept() -> None:
    body = [INBOUND, "oops", {**OUTBOUND, "direction": "sideways"}, {"id": "x", "text": "hi"}]
    result = parse_payload("message", body)
    assert [e.dedupe_key for e in result.events] == ["netsapiens:message:a1"]
    assert [(r.index, r.reason) for r in result.rejected] == [
        (1, "element is str, not an object"),
        (2, "message direction 'sideways' is neither 'orig' nor 'term'"),
        (3, "message has no direction"),
    ]


@pytest.mark.parametrize("model", ["cdr", "call", "voicemail", "messagesession"])
def test_missing_required_fields_rejected(model: str) -> None:
    result = parse_payload(model, [{"domain": "acme"}])
    assert result.events == [] and len(result.rejected) == 1
    assert model in result.rejected[0].reason


@pytest.mark.parametrize("body", [b"not json", "{", b"\xff\xfe", "42", '"text"', "null"])
def test_whole_body_unusable(body: bytes | str) -> None:
    with pytest.raises(PayloadError):
        parse_payload("message", body)


def test_message_without_id_hashes_canonical_json() -> None:
    no_id = {k: v for k, v in INBOUND.items() if k != "id"}
    a = one("message", no_id)
    b = one("message", dict(reversed(list(no_id.items()))))
    assert a.dedupe_key == b.dedupe_key and ":sha256:" in a.dedupe_key


def test_default_region_applies() -> None:
    e = parse_payload("message", [{**INBOUND, "from-number": "07911123456"}], default_region="GB")
    assert e.events[0].from_number == "+447911123456"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("15551230000", "+15551230000"),
        ("5551230000", "+15551230000"),
        ("+15551230000", "+15551230000"),
        ("+1 (555) 123-0000", "+15551230000"),
        ("sip:15551230000@pbx.example.com", "+15551230000"),
        ("sip:+15551230000@pbx.example.com;user=phone", "+15551230000"),
        ("tel:+447911123456", "+447911123456"),
        ("447911123456", "+447911123456"),
        ("101", None),
        ("sip:101@pbx.example.com", None),
        ("anonymous", None),
        ("", None),
        (None, None),
        (15551230000, "+15551230000"),
    ],
)
def test_to_e164(raw: object, expected: str | None) -> None:
    assert to_e164(raw, "US") == expected


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 3000 + b"]" * 3000,
        '[{"a":' * 3000 + "1" + "}" * 3000 + "]",
        b"[" * 100_000,
        b"[NaN]",
        b"[1e999]",
    ],
)
def test_hostile_bodies_raise_only_payload_error(body: bytes | str) -> None:
    with pytest.raises(PayloadError):
        parse_payload("message", body)


def test_decoded_element_nested_too_deep_is_rejected_not_raised() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(5000):
        child: dict[str, object] = {}
        inner["x"] = child
        inner = child
    result = parse_payload("message", [{**INBOUND, "extra": deep}, INBOUND])
    assert [e.dedupe_key for e in result.events] == ["netsapiens:message:a1"]
    assert result.rejected[0].index == 0 and "deeper" in result.rejected[0].reason


def test_lone_surrogates_are_replaced_everywhere() -> None:
    body = json.dumps([{**INBOUND, "id": "\ud800x", "text": "hi \udc00"}])
    event = one_of(parse_payload("message", body))
    assert event.dedupe_key == "netsapiens:message:\ufffdx"
    assert event.body == "hi \ufffd"
    event.to_json().encode("utf-8")  # storable


def one_of(result: ParseResult) -> Event:
    assert len(result.events) == 1
    return result.events[0]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Balance?", "  balance?  "),
        ("Your balance is $0", "your   BALANCE\nis $0"),
        ("Straße", "STRASSE"),
        ("ｂａｌａｎｃｅ", "balance"),  # full-width (a carrier rewrite) folds by NFKC
    ],
)
def test_body_hash_normalises(a: str, b: str) -> None:
    assert body_hash(a) == body_hash(b) is not None


def test_body_hash_edges() -> None:
    assert body_hash(None) is None
    assert body_hash("   \n") is None
    assert body_hash("balance") != body_hash("balance!")
    assert body_hash("x\ud800") == body_hash("x\ufffd")
    assert len(body_hash("hello") or "") == 64


# -- the payload keeps a one-element body's own text as `raw` ---------------------------------


def test_payload_keeps_the_one_elements_text_as_it_came() -> None:
    element = json.dumps({**INBOUND, "text": "caf\u00e9 \u2603"}, ensure_ascii=True, indent=1)
    body = f" [\n {element}\n] \n".encode()
    event = one_of(parse_payload("message", body))
    assert event.raw_json == element
    payload = event.to_json()
    assert f',"raw":{element},"session_id":' in payload  # its place in sorted key order
    assert Event.from_json(payload) == event and Event.from_json(payload).raw == event.raw
    assert Event.from_json(payload).raw["text"] == "caf\u00e9 \u2603"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps([INBOUND, OUTBOUND]),  # two elements: each encoded
        "\ufeff" + json.dumps([INBOUND]),  # a BOM: not cut
        json.dumps([{**INBOUND, "text": "\ud800"}]),  # a surrogate escape: repaired first
        json.dumps([[INBOUND]]),  # not an object
    ],
)
def test_payload_is_encoded_when_the_text_cannot_be_cut(body: str) -> None:
    for event in parse_payload("message", body.encode("utf-8", "surrogatepass")).events:
        assert event.raw_json is None
        payload = event.to_json()
        payload.encode("utf-8")  # storable
        assert Event.from_json(payload) == event and Event.from_json(payload).raw == event.raw


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    extra=st.dictionaries(st.text(), _json_values, max_size=4),
    in_array=st.booleans(),
    ascii_only=st.booleans(),
    pad=st.sampled_from(["", " ", "\n", "\t\r\n "]),
)
def test_a_kept_element_text_reads_back_as_the_parsed_element(
    extra: dict[str, object], in_array: bool, ascii_only: bool, pad: str
) -> None:
    element = {**extra, **INBOUND}
    text = json.dumps(element, ensure_ascii=ascii_only)
    body = f"{pad}[{pad}{text}{pad}]{pad}" if in_array else f"{pad}{text}{pad}"
    event = one_of(parse_payload("message", body.encode("utf-8", "surrogatepass")))
    payload = event.to_json()
    payload.encode("utf-8")  # storable, whatever the element held
    back = Event.from_json(payload)
    assert back == event and back.raw == event.raw == json.loads(payload)["raw"]


def test_a_kept_raw_text_makes_the_canonical_payload() -> None:
    # `to_json` writes the fields itself around the element's own text: for a body written
    # canonically, that is exactly `canonical_json` of the whole event.
    event = one_of(parse_payload("message", canonical_json([INBOUND]).encode()))
    assert event.raw_json == canonical_json(INBOUND)
    assert event.to_json() == canonical_json(event.as_context())


_TEXT = st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=300)
@given(
    fields=st.fixed_dictionaries(
        {
            "source": st.text(min_size=1, max_size=8),  # from_json reads "" as its default
            "kind": st.text(max_size=8),
            "from_number": _TEXT,
            "to_number": _TEXT,
            "body": _TEXT,
            "direction": _TEXT,
            "session_id": _TEXT,
            "domain": _TEXT,
            "user": _TEXT,
            # The span parse_ns_datetime gives an event (1970..9000): outside it a PBX time is
            # unknown, so no event carries one.
            "occurred_at": st.none()
            | st.datetimes(
                min_value=datetime(1970, 1, 1),
                max_value=datetime(8999, 12, 31, 23, 59, 59),
                timezones=st.just(UTC),
            ),
            "duration": st.none() | st.integers(min_value=-(2**70), max_value=2**70),
            "dedupe_key": st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
        }
    ),
    raw=st.dictionaries(st.text(max_size=4), _TEXT | st.integers(), max_size=3),
)
def test_the_payload_written_by_hand_is_canonical_json(fields: dict, raw: dict) -> None:  # type: ignore[type-arg]
    # Quotes, backslashes, control characters, non-ASCII text, None and large numbers: the
    # hand-written fields must be what the json module writes for them.
    event = Event(**fields, raw=raw, raw_json=canonical_json(raw))
    assert event.to_json() == canonical_json(event.as_context())
    assert Event.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    ("model", "element"),
    [
        ("message", INBOUND),
        ("cdr", {"orig_callid": "c1", "orig_from_user": "15551230000", "duration": "3"}),
        ("call", {"call-orig-call-id": "k1", "caller-id-number": "15551230000"}),
        ("voicemail", {"filename": "vm1.wav", "domain": "acme", "user": "101"}),
        ("messagesession", {"messagesession-id": SID, "messagesession-last-sender": "1555"}),
        ("presence", {"id": "p1", "domain": "acme"}),
    ],
)
def test_the_parsers_quick_constructor_builds_what_the_dataclass_does(
    model: str, element: dict[str, str]
) -> None:
    # `Event.of` skips the frozen dataclass's `__init__`: for every model's parser the result
    # must be indistinguishable — every field set, in order, those left out of comparison (raw,
    # raw_json) included — and still frozen.
    import dataclasses

    event = one_of(parse_payload(model, json.dumps([element]).encode()))
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(Event)}
    made = Event(**values)
    assert list(vars(event)) == list(vars(made)) == [f.name for f in dataclasses.fields(Event)]
    assert event == made and vars(event) == vars(made) and hash(event) == hash(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.body = "changed"  # type: ignore[misc]
