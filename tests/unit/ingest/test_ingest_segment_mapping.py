"""Segment calls become the CLM events their names promise; errors name Segment fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from clm_events.catalog import EventType
from clm_events.envelope import EventValidationError
from clm_ingest.domain.segment import SegmentMapping, link_id, to_cloudevents

NOW = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


def convert_all(msg: Any, call: str | None = None, **mapping: Any) -> list[Any]:
    return to_cloudevents(
        msg, call=call, source="shop", mapping=SegmentMapping(**mapping), received_at=NOW
    )


def convert(msg: Any, call: str | None = None, **mapping: Any) -> Any:
    [event] = convert_all(msg, call, **mapping)
    return event


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
    event, _link = convert_all(identify, "identify")
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
    assert convert(msg).type == EventType.WEB_TRACKED
    custom = {"Checkout Finished": EventType.PURCHASE_COMPLETED}
    assert convert(msg, track_events=custom).type == EventType.PURCHASE_COMPLETED


def test_any_other_track_name_is_a_tracked_event_with_its_properties() -> None:
    msg = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": "m-6",
        "userId": "cust-42",
        "properties": {"sku": "SKU-9", "category": "shoes", "price": 59.9},
        "context": {"library": {"name": "analytics-python"}, "ip": "203.0.113.9"},
        "integrations": {"All": True},
        "sentAt": "2026-11-20T10:15:01Z",
        "writeKey": "clm_source_x",
    }
    event = convert(msg)
    assert event.type == EventType.WEB_TRACKED
    assert (event.id, event.subject) == ("m-6", "cust-42")
    assert event.data.name == "Product Viewed"
    assert event.data.properties == {"sku": "SKU-9", "category": "shoes", "price": 59.9}
    # context (ip, user agent: personal data), integrations, sentAt, writeKey: not kept
    assert set(event.data.model_dump(exclude_none=True)) == {"name", "properties"}
    assert "ip" not in str(event.model_dump())


def test_a_track_name_must_be_text_of_at_most_200_characters() -> None:
    assert errors({**order_completed(), "event": ""})[0]["path"] == "event"
    assert errors({**order_completed(), "event": 7})[0]["path"] == "event"
    [too_long] = errors({**order_completed(), "event": "x" * 201})
    assert too_long["path"] == "event" and "200" in too_long["reason"]


def test_anonymous_only_calls_are_keyed_by_the_anonymous_id() -> None:
    page = {"messageId": "m-5", "anonymousId": "a-9", "properties": {"url": "https://x.io"}}
    event = convert(page, "page")
    assert (event.subject, event.data.anonymous_id) == ("a-9", "a-9")
    assert event.model_extra == {"anonymousid": "a-9"}
    track = {"messageId": "m-7", "anonymousId": 12, "event": "Product Viewed"}
    assert convert(track, "track").subject == "12"  # numeric ids become strings
    [error] = errors({"messageId": "m-8", "userId": "", "properties": {"url": "x"}}, "page")
    assert error["path"] == "userId" and "userId or anonymousId" in error["reason"]


def test_identify_with_both_ids_also_links_them_under_a_derived_id() -> None:
    identify = {"type": "identify", "messageId": "m-9", "userId": "cust-1", "anonymousId": "a-1"}
    profile, link = convert_all(identify)
    assert (profile.type, profile.id, profile.subject) == ("web.identified", "m-9", "cust-1")
    assert (link.type, link.id, link.subject) == ("identity.linked", "m-9:link", "cust-1")
    assert link.data.anonymous_id == "a-1"
    assert convert_all(identify) == [profile, link]  # a retried call gives the same ids
    assert len(link_id("m" * 256)) <= 256
    same = {**identify, "anonymousId": "cust-1"}
    assert [e.type for e in convert_all(same)] == ["web.identified"]  # nothing to link
    anonymous = {**identify, "userId": None}
    [visitor] = convert_all(anonymous)
    assert (visitor.type, visitor.subject) == ("web.identified", "a-1")


def test_alias_links_the_previous_id_to_the_user_id() -> None:
    alias = {"type": "alias", "messageId": "m-10", "previousId": "a-2", "userId": "cust-2"}
    event = convert(alias)
    assert (event.type, event.id, event.subject) == ("identity.linked", "m-10", "cust-2")
    assert event.data.anonymous_id == "a-2"
    assert errors({**alias, "previousId": None}) == [
        {"path": "previousId", "reason": "field required"}
    ]
    assert errors({**alias, "userId": None}) == [{"path": "userId", "reason": "field required"}]


def test_screen_is_a_screen_view_and_group_keeps_nothing() -> None:
    screen = {
        "type": "screen",
        "messageId": "m-11",
        "userId": "cust-3",
        "name": "Basket",
        "properties": {"items": 2},
    }
    event = convert(screen)
    assert event.type == EventType.WEB_SCREEN_VIEWED
    assert (event.data.name, event.data.properties) == ("Basket", {"items": 2})
    group = {"type": "group", "messageId": "m-12", "userId": "cust-3", "groupId": "acme"}
    assert convert_all(group) == []


def test_a_page_without_properties_url_takes_the_context_page_url() -> None:
    page = {"messageId": "m-13", "userId": "c", "context": {"page": {"url": "https://x.io/a"}}}
    assert convert(page, "page").data.url == "https://x.io/a"


def test_unsupported_calls_and_shapes_are_named() -> None:
    assert errors({"type": "merge", "userId": "c"})[0] == {
        "path": "type",
        "reason": "unsupported Segment call 'merge'; supported: "
        "track, identify, page, screen, group, alias",
    }
    assert errors({"type": "track", "event": "Signed Up", "properties": [1]})[0]["path"] == (
        "properties"
    )
    with pytest.raises(EventValidationError, match="must be a JSON object"):
        convert_all([], call=None)


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
