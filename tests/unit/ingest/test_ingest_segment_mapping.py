"""Segment calls become the CLM events their names promise; errors name Segment fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from clm_events.catalog import EventType
from clm_events.envelope import EventValidationError
from clm_ingest.domain.segment import SegmentMapping, to_cloudevent

NOW = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


def convert(msg: Any, call: str | None = None, **mapping: Any) -> Any:
    return to_cloudevent(
        msg, call=call, source="shop", mapping=SegmentMapping(**mapping), received_at=NOW
    )


def errors(msg: Any, call: str | None = None, **mapping: Any) -> list[dict[str, str]]:
    with pytest.raises(EventValidationError) as info:
        convert(msg, call, **mapping)
    return info.value.to_list()


def order_completed(**properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "cust-42",
        "anonymousId": "anon-7",
        "timestamp": "2026-11-20T10:15:00.000+01:00",
        "properties": {"order_id": 1001, "revenue": 59.9, "currency": "EUR", **properties},
    }


def test_order_completed_becomes_a_purchase_with_segment_ids_time_and_products() -> None:
    event = convert(
        order_completed(
            total=70,
            products=[
                {"product_id": "p-1", "category": "books", "quantity": 2, "price": 10},
                {"sku": "SKU-9", "product_id": "p-9", "price": "39.90"},
            ],
        )
    )
    assert event.type == EventType.PURCHASE_COMPLETED
    assert (event.id, event.source, event.subject) == ("m-1", "shop", "cust-42")
    assert event.time == datetime(2026, 11, 20, 9, 15, tzinfo=UTC)
    assert event.data.order_id == "1001"
    assert event.data.amount == Decimal("59.9")  # revenue wins over total
    assert [(i.sku, i.quantity, i.unit_price) for i in event.data.items] == [
        ("p-1", 2, Decimal("10")),
        ("SKU-9", 1, Decimal("39.90")),
    ]
    assert event.model_extra == {"anonymousid": "anon-7"}


def test_order_completed_without_revenue_uses_total() -> None:
    msg = order_completed(total="80.00")
    del msg["properties"]["revenue"]
    assert convert(msg).data.amount == Decimal("80.00")


def test_order_refunded_and_signed_up_map_to_their_clm_types() -> None:
    refund = {**order_completed(), "event": "Order Refunded"}
    refund["properties"] = {"order_id": "1001", "total": "59.90", "currency": "EUR"}
    assert convert(refund).type == EventType.PURCHASE_REFUNDED
    signup = {
        **order_completed(),
        "event": "Signed Up",
        "properties": {"email": "ada@example.com", "plan": "pro"},
    }
    event = convert(signup)
    assert event.type == EventType.WEB_SIGNED_UP
    assert event.data.email == "ada@example.com"
    assert event.data.traits == {"email": "ada@example.com", "plan": "pro"}


def test_identify_and_page_map_to_web_events_keeping_the_anonymous_id() -> None:
    identify = {"messageId": "m-2", "userId": "cust-42", "anonymousId": "a-1", "traits": {}}
    identify["traits"] = {"email": "ada@example.com", "timezone": "Europe/Paris"}
    event = convert(identify, "identify")
    assert event.type == EventType.WEB_IDENTIFIED
    assert event.data.traits["timezone"] == "Europe/Paris"
    assert event.data.anonymous_id == "a-1"
    assert event.time == NOW  # no timestamp: received time
    page: dict[str, Any] = {"messageId": "m-3", "userId": "cust-42", "name": "Pricing"}
    page["properties"] = {"url": "https://example.com/pricing"}
    event = convert(page, "page")
    assert event.type == EventType.WEB_PAGE_VIEWED
    assert (event.data.url, event.data.title) == ("https://example.com/pricing", "Pricing")


def test_a_track_named_after_a_clm_type_passes_properties_through_as_data() -> None:
    msg: dict[str, Any] = {"event": "support.nps_submitted", "messageId": "m-4", "userId": "c"}
    msg["properties"] = {"score": 9}
    assert convert(msg, "track").data.score == 9
    assert errors({**msg, "properties": {"score": 11}}, "track")[0]["path"] == "properties.score"


def test_the_mapping_is_configurable() -> None:
    msg = {**order_completed(), "event": "Checkout Finished"}
    assert "unmapped event name 'Checkout Finished'" in errors(msg)[0]["reason"]
    custom = {"Checkout Finished": EventType.PURCHASE_COMPLETED}
    assert convert(msg, track_events=custom).type == EventType.PURCHASE_COMPLETED


def test_an_unmapped_name_lists_the_supported_ones() -> None:
    [error] = errors({**order_completed(), "event": "Product Viewed"})
    assert error["path"] == "event"
    for supported in ("'Order Completed'", "'Order Refunded'", "'Signed Up'", "web.page_viewed"):
        assert supported in error["reason"]
    assert "lifecycle.stage_changed" not in error["reason"]


def test_errors_point_at_the_segment_fields_the_sender_wrote() -> None:
    msg = order_completed(products=[{"product_id": "p", "quantity": 0, "price": -1}])
    msg["properties"].pop("currency")
    msg["properties"]["revenue"] = "lots"
    del msg["messageId"]
    paths = {e["path"] for e in errors(msg)}
    assert paths == {
        "messageId",
        "properties.currency",
        "properties.revenue",
        "properties.products.0.quantity",
        "properties.products.0.price",
    }


def test_anonymous_only_calls_are_refused_unless_configured() -> None:
    page = {"messageId": "m-5", "anonymousId": "a-9", "properties": {"url": "https://x.io"}}
    [error] = errors(page, "page")
    assert error["path"] == "userId"
    assert "anonymous-only" in error["reason"]
    assert convert(page, "page", anonymous_subject=True).subject == "a-9"


def test_unsupported_calls_and_shapes_are_named() -> None:
    assert errors({"type": "alias", "userId": "c"})[0] == {
        "path": "type",
        "reason": "unsupported Segment call 'alias'; supported: track, identify, page",
    }
    assert errors({"type": "track", "event": "Signed Up", "properties": [1]})[0]["path"] == (
        "properties"
    )
    with pytest.raises(EventValidationError, match="must be a JSON object"):
        to_cloudevent([], call=None, source="shop", mapping=SegmentMapping(), received_at=NOW)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({**order_completed(), "userId": "cust-\x00"}, "userId"),
        ({**order_completed(), "anonymousId": "anon-\x00"}, "anonymousId"),
        ({**order_completed(), "event": "Order\x00Completed"}, "event"),
        (order_completed(coupon="\ud800"), "properties.coupon"),
        ({"type": "identify", "userId": "c", "traits": {"name": "Ni\x00ne"}}, "traits.name"),
    ],
)
def test_text_no_service_can_store_is_refused_naming_the_segment_field(
    message: dict[str, Any], path: str
) -> None:
    found = errors(message)
    assert [e["path"] for e in found] == [path]
    assert "cannot be stored" in found[0]["reason"] or "surrogate" in found[0]["reason"]
