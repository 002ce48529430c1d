"""CloudEvents envelope: what producers and consumers see when events are parsed/encoded."""

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from clm_events.catalog import EventType, LifecycleStageChanged, Stage
from clm_events.envelope import (
    BillingInvoicePaidEvent,
    CloudEvent,
    EventValidationError,
    FieldError,
    LifecycleStageChangedEvent,
    PurchaseCompletedEvent,
    decode_kafka_record,
    encode_structured,
    idempotency_key,
    new_event,
    parse_binary,
    parse_event,
    parse_structured,
)

DESIGN_EXAMPLE = """
{"specversion": "1.0", "id": "ord-1001-paid", "source": "shop/checkout",
 "type": "purchase.completed", "subject": "cust-42", "time": "2026-11-20T10:15:00Z",
 "datacontenttype": "application/json",
 "data": {"order_id": "1001", "amount": "59.90", "currency": "EUR"}}
"""

MINIMAL_DATA: dict[str, dict[str, Any]] = {
    "purchase.completed": {"order_id": "1001", "amount": "59.90", "currency": "EUR"},
    "purchase.refunded": {"order_id": "1001", "amount": "10", "currency": "EUR"},
    "billing.subscription_started": {"subscription_id": "sub-1", "plan": "pro"},
    "billing.invoice_paid": {"invoice_id": "inv-1", "amount": 19.99, "currency": "USD"},
    "billing.payment_failed": {"invoice_id": "inv-1", "amount": "19.99", "currency": "USD"},
    "billing.subscription_cancelled": {"subscription_id": "sub-1"},
    "support.ticket_opened": {"ticket_id": "t-1"},
    "support.ticket_resolved": {"ticket_id": "t-1"},
    "support.nps_submitted": {"score": 0},
    "web.signed_up": {},
    "web.identified": {},
    "web.page_viewed": {"url": "https://shop.example/p/1"},
    "web.screen_viewed": {},
    "web.tracked": {"name": "Product Viewed"},
    "identity.linked": {"anonymous_id": "anon-1"},
    "lifecycle.stage_changed": {
        "to_stage": "onboarding",
        "at": "2026-11-20T10:15:00Z",
        "cause": "first purchase",
    },
    "lifecycle.transition_retracted": {
        "transition_id": "tr-1",
        "to_stage": "at_risk",
        "at": "2026-11-20T10:15:00Z",
        "cause": "time",
    },
    "lifecycle.customers_merged": {"anonymous_id": "anon-7f3a"},
    "lifecycle.score_updated": {
        "clv": "120.50",
        "churn_probability": 0.2,
        "p_alive": 1,
        "expected_purchases": 0.0,
        "model": "bgnbd-gg/3",
    },
    "lifecycle.score_model_served": {
        "version": 3,
        "model": "bgnbd",
        "time_unit": "week",
        "purchase_params": {"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4},
        "typical_gap": 12.0,
        "horizon_months": 12,
        "monthly_discount_rate": 0.01,
    },
    "campaign.action_fired": {
        "trigger_id": "trg-1",
        "action_id": "act-1",
        "channel": "webhook",
        "status": "delivered",
    },
    "privacy.erasure_requested": {"request_id": "era-1", "customer_ids": ["c-1"]},
    "privacy.erasure_completed": {"request_id": "era-1", "service": "scoring"},
}


def envelope(event_type: str = "purchase.completed", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "shop/checkout",
        "type": event_type,
        "subject": "cust-42",
        "time": "2026-11-20T10:15:00Z",
        "data": MINIMAL_DATA[event_type],
    }
    event.update(overrides)
    return event


def errors_of(obj: Any) -> list[FieldError]:
    with pytest.raises(EventValidationError) as info:
        parse_event(obj)
    return info.value.errors


def test_design_example_parses() -> None:
    event = parse_structured(DESIGN_EXAMPLE)
    assert isinstance(event, PurchaseCompletedEvent)
    assert event.subject == "cust-42"
    assert event.time == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert event.data.amount == Decimal("59.90")
    assert event.data.currency == "EUR"
    assert idempotency_key(event) == ("shop/checkout", "ord-1001-paid")


@pytest.mark.parametrize("event_type", sorted(MINIMAL_DATA))
def test_every_type_parses_and_round_trips(event_type: str) -> None:
    event = parse_event(envelope(event_type))
    assert event.type == event_type
    encoded = encode_structured(event)
    again = parse_structured(encoded)
    assert again == event
    assert encode_structured(again) == encoded  # deterministic bytes


def test_every_type_is_covered_by_the_table() -> None:
    assert set(MINIMAL_DATA) == {t.value for t in EventType}


def test_money_keeps_its_precision_as_a_string() -> None:
    encoded = encode_structured(parse_structured(DESIGN_EXAMPLE))
    assert json.loads(encoded)["data"]["amount"] == "59.90"
    again = parse_structured(encoded)
    assert isinstance(again, PurchaseCompletedEvent)
    assert str(again.data.amount) == "59.90"


def test_money_accepts_a_json_number() -> None:
    event = parse_structured(DESIGN_EXAMPLE.replace('"59.90"', "59.9"))
    assert isinstance(event, PurchaseCompletedEvent)
    assert event.data.amount == Decimal("59.9")


def test_missing_required_field_is_reported_at_its_path() -> None:
    data = {"amount": "1", "currency": "EUR"}
    assert errors_of(envelope(data=data)) == [FieldError("data.order_id", "field required")]


@pytest.mark.parametrize(
    ("event_type", "data", "path", "reason"),
    [
        (
            "purchase.completed",
            {"order_id": ["1001"], "amount": "1", "currency": "EUR"},
            "data.order_id",
            "Input should be a valid string",
        ),
        (
            "purchase.completed",
            {"order_id": "1", "amount": "lots", "currency": "EUR"},
            "data.amount",
            "Input should be a valid decimal",
        ),
        (
            "purchase.completed",
            {"order_id": "1", "amount": True, "currency": "EUR"},
            "data.amount",
            "Decimal input should be an integer, float, string or Decimal object",
        ),
        ("support.nps_submitted", {"score": True}, "data.score", "Input should be a valid integer"),
        ("support.nps_submitted", {"score": 11}, "data.score", "less than or equal to 10"),
        ("support.ticket_resolved", {"ticket_id": "t", "satisfaction": 0}, "data.satisfaction",
         "greater than or equal to 1"),
        ("support.ticket_opened", {"ticket_id": "t", "priority": "p1"}, "data.priority",
         "Input should be 'low', 'normal', 'high' or 'urgent'"),
        ("web.identified", {"traits": ["a"]}, "data.traits", "Input should be an object"),
        ("web.page_viewed", [], "data", "Input should be an object"),
        ("web.tracked", {}, "data.name", "field required"),
        ("web.tracked", {"name": ""}, "data.name", "at least 1 character"),
        ("web.tracked", {"name": "x" * 201}, "data.name", "at most 200 characters"),
        ("web.tracked", {"name": "A", "properties": [1]}, "data.properties",
         "Input should be an object"),
        ("web.screen_viewed", {"properties": "home"}, "data.properties",
         "Input should be an object"),
        ("identity.linked", {}, "data.anonymous_id", "field required"),
        ("identity.linked", {"anonymous_id": ""}, "data.anonymous_id", "at least 1 character"),
    ],
)  # fmt: skip
def test_wrong_kind_is_reported_with_path_and_reason(
    event_type: str, data: Any, path: str, reason: str
) -> None:
    [error] = errors_of(envelope(event_type, data=data))
    assert error.path == path
    assert reason in error.reason


def test_a_tracked_event_keeps_its_name_and_properties_and_defaults_them_to_empty() -> None:
    props = {"category": "shoes", "price": 59.9, "tags": ["new"]}
    data = {"name": "Product Viewed", "properties": props}
    event = parse_event(envelope("web.tracked", data=data))
    assert (event.data.name, event.data.properties) == ("Product Viewed", props)
    screen = parse_event(envelope("web.screen_viewed", data={"name": "Home"}))
    assert screen.data.properties == {}
    assert json.loads(encode_structured(screen))["data"] == {"name": "Home", "properties": {}}


@pytest.mark.parametrize(
    ("event_type", "data", "path"),
    [
        ("web.tracked", {"name": "Ni\x00ne"}, "data.name"),
        ("web.tracked", {"name": "A", "properties": {"k": "\ud800"}}, "data.properties.k"),
        ("web.screen_viewed", {"properties": {"Ni\x00ne": 1}}, "data.properties.Ni\\u0000ne"),
        ("identity.linked", {"anonymous_id": "anon-\x00"}, "data.anonymous_id"),
    ],
)
def test_the_new_types_refuse_text_no_service_can_store(
    event_type: str, data: dict[str, Any], path: str
) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(envelope(event_type, data=data))
    assert info.value.kind == "unstorable_text"
    assert [e.path for e in info.value.errors] == [path]


def test_item_quantity_error_points_into_the_list() -> None:
    data = {
        "order_id": "1",
        "amount": "5",
        "currency": "EUR",
        "items": [{"sku": "A", "quantity": 0, "unit_price": "5"}],
    }
    [error] = errors_of(envelope(data=data))
    assert error.path == "data.items.0.quantity"


@pytest.mark.parametrize("event_type", ["purchase.exploded", None, 7])
def test_unknown_or_missing_type_is_one_error_listing_supported_types(event_type: Any) -> None:
    obj = envelope()
    if event_type is None:
        del obj["type"]
    else:
        obj["type"] = event_type
    [error] = errors_of(obj)
    assert error.path == "type"
    assert all(t.value in error.reason for t in EventType)
    if event_type == "purchase.exploded":
        assert "unknown event type 'purchase.exploded'" in error.reason


def test_naive_time_is_rejected_and_offsets_normalised_to_utc() -> None:
    [error] = errors_of(envelope(time="2026-11-20T10:15:00"))
    assert error.path == "time"
    assert "timezone" in error.reason
    event = parse_event(envelope(time="2026-11-20T11:15:00+01:00"))
    assert event.time == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert event.time.tzinfo is UTC


@pytest.mark.parametrize("time", [1763633700, "1763633700", "2026-11-20", "yesterday"])
def test_time_must_be_an_rfc3339_timestamp(time: Any) -> None:
    [error] = errors_of(envelope(time=time))
    assert error.path == "time"


def test_missing_subject_and_time_are_rejected() -> None:
    obj = envelope()
    del obj["subject"], obj["time"]
    assert errors_of(obj) == [
        FieldError("subject", "field required"),
        FieldError("time", "field required"),
    ]


@pytest.mark.parametrize("currency", ["EURO", "XYZ", "", 978])
def test_bad_currency_is_rejected(currency: Any) -> None:
    [error] = errors_of(envelope(data={"order_id": "1", "amount": "1", "currency": currency}))
    assert error.path == "data.currency"


@pytest.mark.parametrize("amount", ["-0.01", -1, "NaN", "Infinity", "1e999999"])
def test_negative_or_non_finite_amount_is_rejected(amount: Any) -> None:
    [error] = errors_of(envelope(data={"order_id": "1", "amount": amount, "currency": "EUR"}))
    assert error.path == "data.amount"


def test_refund_must_be_positive() -> None:
    data = {"order_id": "1", "amount": "0", "currency": "EUR"}
    [error] = errors_of(envelope("purchase.refunded", data=data))
    assert error.path == "data.amount"


def test_extension_attributes_are_kept_through_a_round_trip() -> None:
    event = parse_event(envelope(traceparent="00-4bf92f-00f067-01", partitionkey="cust-42"))
    assert event.model_extra == {"traceparent": "00-4bf92f-00f067-01", "partitionkey": "cust-42"}
    assert parse_structured(encode_structured(event)) == event


@pytest.mark.parametrize(
    "name", ["Trace-Id", "trace_id", "averyveryverylongextname", "data_base64"]
)
def test_unknown_non_extension_attribute_is_rejected(name: str) -> None:
    assert [e.path for e in errors_of(envelope(**{name: "x"}))] == [name]


def test_extension_attribute_values_must_be_scalars() -> None:
    [error] = errors_of(envelope(tenant={"id": 1}))
    assert error.path == "tenant"


def test_all_problems_are_reported_together() -> None:
    obj = envelope(Bogus=1, time="2026-11-20T10:15:00", data={"amount": "-1", "currency": "EUR"})
    paths = [e.path for e in errors_of(obj)]
    assert paths == ["Bogus", "time", "data.order_id", "data.amount"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("specversion", "0.3"), ("id", ""), ("source", ""), ("subject", ""), ("id", "x" * 257)],
)
def test_core_attribute_rules(field: str, value: str) -> None:
    assert [e.path for e in errors_of(envelope(**{field: value}))] == [field]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml"])
def test_non_json_datacontenttype_is_rejected(content_type: str) -> None:
    assert [e.path for e in errors_of(envelope(datacontenttype=content_type))] == [
        "datacontenttype"
    ]


def test_json_suffix_datacontenttype_is_accepted() -> None:
    ct = "application/vnd.shop+json; charset=utf-8"
    assert parse_event(envelope(datacontenttype=ct)).datacontenttype == ct


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\x00garbage",
        b"not json",
        b"",
        b"[1, 2]",
        b"42",
        b"null",
        b'{"a": NaN}',
        b"[" * 100_000,
    ],
)
def test_garbage_gives_an_error_not_a_crash(raw: bytes) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_structured(raw)
    assert [e.path for e in info.value.errors] == [""]


def test_error_is_a_readable_one_line_summary_and_a_422_body() -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(envelope(data={"amount": "1", "currency": "EUR"}))
    err = info.value
    assert str(err) == "invalid event: data.order_id: field required"
    assert err.to_dict() == {
        "detail": "invalid event: data.order_id: field required",
        "errors": [{"path": "data.order_id", "reason": "field required"}],
    }
    assert isinstance(err, ValueError)


def kafka_headers(**attrs: str) -> list[tuple[str, bytes]]:
    return [(f"ce_{k}", v.encode()) for k, v in attrs.items()]


BINARY_ATTRS = {
    "specversion": "1.0",
    "id": "inv-9",
    "source": "billing/stripe",
    "type": "billing.invoice_paid",
    "subject": "cust-7",
    "time": "2026-11-20T10:15:00Z",
    "traceparent": "00-abc-01",
}
BINARY_DATA = b'{"invoice_id": "inv-9", "amount": "19.90", "currency": "EUR"}'


def test_kafka_binary_mode_headers_decode() -> None:
    headers = [*kafka_headers(**BINARY_ATTRS), ("content-type", b"application/json")]
    event = decode_kafka_record(headers, BINARY_DATA)
    assert isinstance(event, BillingInvoicePaidEvent)
    assert event.subject == "cust-7"
    assert str(event.data.amount) == "19.90"
    assert event.model_extra == {"traceparent": "00-abc-01"}


def test_kafka_structured_mode_decodes_the_value() -> None:
    event = decode_kafka_record(
        [("content-type", b"application/cloudevents+json")], DESIGN_EXAMPLE.encode()
    )
    assert idempotency_key(event) == ("shop/checkout", "ord-1001-paid")


@pytest.mark.parametrize(
    ("headers", "value", "path"),
    [
        ([], None, ""),
        (kafka_headers(**BINARY_ATTRS), b"{not json", "data"),
        (kafka_headers(**BINARY_ATTRS), None, "data"),
        ([*kafka_headers(**BINARY_ATTRS), ("ce_id", b"other")], BINARY_DATA, "id"),
        ([*kafka_headers(**BINARY_ATTRS), ("ce_subject", b"\xff\xfe")], BINARY_DATA, "subject"),
        ([*kafka_headers(**BINARY_ATTRS), ("content-type", b"text/plain")], b"hi",
         "datacontenttype"),
    ],
)  # fmt: skip
def test_bad_kafka_records_give_an_error(
    headers: list[tuple[str, bytes]], value: bytes | None, path: str
) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_kafka_record(headers, value)
    assert info.value.errors[0].path == path


def test_parse_binary_accepts_http_header_case() -> None:
    attrs = {k.title(): v for k, v in BINARY_ATTRS.items()}
    event = parse_binary(attrs, BINARY_DATA, "application/json")
    assert event.id == "inv-9"


def test_new_event_builds_a_valid_stage_change() -> None:
    before = datetime.now(UTC)
    event = new_event(
        EventType.LIFECYCLE_STAGE_CHANGED,
        id="cust-42:transition:3",
        source="clm/stage-engine",
        subject="cust-42",
        data=LifecycleStageChanged(
            to_stage=Stage.ONBOARDING,
            at=datetime(2026, 11, 20, 11, 15, tzinfo=timezone(timedelta(hours=1))),
            cause="first purchase",
            facts={"purchases": 1},
        ),
    )
    assert isinstance(event, LifecycleStageChangedEvent)
    assert event.data.from_stage is None
    assert event.data.at == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert before <= event.time <= datetime.now(UTC)
    assert parse_structured(encode_structured(event)) == event


def test_new_event_accepts_a_mapping_and_validates_it() -> None:
    event: CloudEvent = new_event(
        "lifecycle.stage_changed",
        id="x",
        source="clm/stage-engine",
        subject="cust-42",
        data={"from_stage": "active", "to_stage": "at_risk", "at": "2026-11-20T10:15:00Z",
              "cause": "payment failed"},
        time=datetime(2026, 11, 20, 10, 16, tzinfo=UTC),
    )  # fmt: skip
    assert event.time == datetime(2026, 11, 20, 10, 16, tzinfo=UTC)
    with pytest.raises(EventValidationError) as info:
        new_event("lifecycle.stage_changed", id="x", source="s", subject="c",
                  data={"to_stage": "gone", "at": "2026-11-20T10:15:00Z", "cause": "?"},
                  time=datetime(2026, 11, 20))  # fmt: skip
    assert [e.path for e in info.value.errors] == ["time", "data.to_stage"]
