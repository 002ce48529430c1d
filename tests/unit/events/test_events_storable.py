"""Text PostgreSQL cannot store (U+0000, unpaired surrogates) and infinite numbers are
refused by the envelope itself, wherever they sit, naming the field; every event the
envelope accepts encodes to JSON that PostgreSQL text and jsonb take."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clm_events.envelope import (
    EventValidationError,
    decode_kafka_record,
    encode_structured,
    parse_event,
    parse_structured,
)
from clm_events.storable import UNSTORABLE, bad_char, is_storable, printable


def identified(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "web/app",
        "type": "web.identified",
        "subject": "cust-42",
        "time": "2026-11-20T10:15:00Z",
        "data": {"traits": {"name": "Nine", "tags": ["a", "b"]}},
    }
    event.update(overrides)
    return event


def refusal(obj: Any) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        parse_event(obj)
    return info.value


@pytest.mark.parametrize(
    ("event", "path"),
    [
        (identified(subject="fuzz-\x00-8"), "subject"),
        (identified(id="ord-\x00"), "id"),
        (identified(source="web/\x00"), "source"),
        (identified(data={"traits": {"name": "Ni\x00ne"}}), "data.traits.name"),
        (identified(data={"traits": {"tags": ["ok", "b\x00d"]}}), "data.traits.tags.1"),
        (
            identified(data={"traits": {"deep": {"er": [{"x": "\ud800"}]}}}),
            "data.traits.deep.er.0.x",
        ),
        (identified(traceparent="00-\x00"), "traceparent"),
        (identified(data={"traits": {"score": float("inf")}}), "data.traits.score"),
    ],
)
def test_unstorable_text_anywhere_is_refused_naming_its_field(
    event: dict[str, Any], path: str
) -> None:
    error = refusal(event)
    assert error.kind == UNSTORABLE
    assert [e.path for e in error.errors] == [path]


def test_a_key_with_nul_is_named_without_the_nul_itself() -> None:
    error = refusal(identified(data={"traits": {"Ni\x00ne": "x"}}))
    [problem] = error.errors
    assert problem.path == "data.traits.Ni\\u0000ne"
    assert "the name contains U+0000" in problem.reason
    # The whole reason is itself storable: it travels in headers into the dead-letter table.
    assert bad_char(str(error)) is None


def test_an_unknown_type_with_nul_is_refused_as_unstorable_not_echoed() -> None:
    error = refusal(identified(type="web.\x00"))
    assert error.kind == UNSTORABLE and [e.path for e in error.errors] == ["type"]


def test_json_escapes_that_decode_to_unstorable_text_are_refused() -> None:
    raw = json.dumps(identified()).replace('"Nine"', '"Ni\\u0000ne"').encode()
    assert [e.path for e in _raises(lambda: parse_structured(raw)).errors] == ["data.traits.name"]
    lone = json.dumps(identified()).replace('"Nine"', '"\\udc00"').encode()
    error = _raises(lambda: parse_structured(lone))
    assert "U+DC00, an unpaired surrogate" in error.errors[0].reason
    huge = json.dumps(identified()).replace('"Nine"', "1e400").encode()
    assert "not finite" in _raises(lambda: parse_structured(huge)).errors[0].reason


def test_binary_mode_headers_with_nul_are_refused_by_attribute() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"tkt\x00-1"),
        ("ce_source", b"support/desk"),
        ("ce_type", b"support.ticket_opened"),
        ("ce_subject", b"cust-20"),
        ("ce_time", b"2026-11-20T10:15:00Z"),
    ]
    error = _raises(lambda: decode_kafka_record(headers, b'{"ticket_id": "T-1"}'))
    assert error.kind == UNSTORABLE and [e.path for e in error.errors] == ["id"]


def test_every_problem_is_listed_not_only_the_first() -> None:
    error = refusal(identified(subject="a\x00", data={"traits": {"a": "\x00", "b": "\x00"}}))
    assert [e.path for e in error.errors] == ["subject", "data.traits.a", "data.traits.b"]


def test_printable_escapes_only_what_cannot_be_stored() -> None:
    assert printable("Zoë \U0001f600") == "Zoë \U0001f600"
    assert printable("a\x00b\ud800") == "a\\u0000b\\ud800"


def _raises(call: Any) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        call()
    return info.value


# Every code point, surrogates included (hypothesis leaves them out unless asked).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
FIELDS = ["id", "source", "subject", "data.traits.name", "data.traits.city.0", "data.anonymous_id"]


@given(field=st.sampled_from(FIELDS), text=ANY_TEXT)
def test_every_accepted_event_is_storable_and_every_refusal_names_a_field(
    field: str, text: str
) -> None:
    event = identified(data={"traits": {"name": "n", "city": ["c"]}, "anonymous_id": "a"})
    _put(event, field, text)
    try:
        parsed = parse_event(event)
    except EventValidationError as exc:
        assert exc.errors and all(e.path for e in exc.errors)
        assert bad_char(str(exc)) is None
        if bad_char(text) is not None:
            assert exc.kind == UNSTORABLE
            assert [e.path for e in exc.errors] == [field]
        return
    assert bad_char(text) is None
    encoded = encode_structured(parsed).decode("utf-8")  # strict: a surrogate would raise
    assert is_storable(json.loads(encoded))


def _put(event: dict[str, Any], path: str, value: str) -> None:
    *parents, last = path.split(".")
    target: Any = event
    for name in parents:
        target = target[name]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
