"""Segment-compatible calls (track, identify, page) as CLM CloudEvents.

Segment's e-commerce v2 names map to CLM types; a track call whose name already is a CLM
type passes its properties through as `data`. Errors name the Segment field the sender
wrote (`properties.revenue`), not the CloudEvent field it became (`data.amount`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clm_events.catalog import DERIVED_TYPES, EventType
from clm_events.envelope import (
    Event,
    EventValidationError,
    FieldError,
    check_storable,
    parse_event,
)

DEFAULT_TRACK_EVENTS: Mapping[str, EventType] = {
    "Order Completed": EventType.PURCHASE_COMPLETED,
    "Order Refunded": EventType.PURCHASE_REFUNDED,
    "Signed Up": EventType.WEB_SIGNED_UP,
}
CALLS = ("track", "identify", "page")
PRODUCER_TYPES = tuple(t for t in EventType if t not in DERIVED_TYPES)


@dataclass(frozen=True)
class SegmentMapping:
    track_events: Mapping[str, EventType] = field(default_factory=lambda: DEFAULT_TRACK_EVENTS)
    # Off by default: an anonymousId is a browser, not a customer, and would split one
    # customer's history across ids.
    anonymous_subject: bool = False

    def supported_track_events(self) -> str:
        names = ", ".join(f"'{n}'" for n in self.track_events)
        return f"{names}, or a CLM event type ({', '.join(PRODUCER_TYPES)})"

    def track_type(self, name: Any) -> EventType:
        if not isinstance(name, str) or not name:
            raise _fail("event", f"field required; supported: {self.supported_track_events()}")
        mapped = self.track_events.get(name)
        if mapped is not None:
            return mapped
        if name in PRODUCER_TYPES:
            return EventType(name)
        raise _fail(
            "event",
            f"unmapped event name '{name[:64]}'; supported: {self.supported_track_events()}",
        )


def _fail(path: str, reason: str) -> EventValidationError:
    return EventValidationError([FieldError(path, reason)])


def _id(value: Any) -> Any:
    # Segment senders often use numeric ids; CLM ids are strings.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _first(props: Mapping[str, Any], *names: str) -> tuple[Any, str]:
    for name in names:
        if props.get(name) is not None:
            return props[name], name
    return None, names[0]


def _compact(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _item(product: Any) -> Any:
    if not isinstance(product, Mapping):
        return product  # validation reports it with its index
    sku, _ = _first(product, "sku", "product_id")
    return _compact(
        {
            "sku": _id(sku),
            "category": product.get("category"),
            "quantity": product.get("quantity"),
            "unit_price": product.get("price"),
        }
    )


# Each builder returns `data` and how its fields are named in the Segment message.
Built = tuple[dict[str, Any], dict[str, str]]


def _order(props: Mapping[str, Any], amount_from: tuple[str, ...]) -> Built:
    amount, amount_name = _first(props, *amount_from)
    data: dict[str, Any] = {
        "order_id": _id(props.get("order_id")),
        "amount": amount,
        "currency": props.get("currency"),
    }
    paths = {
        "order_id": "properties.order_id",
        "amount": f"properties.{amount_name}",
        "currency": "properties.currency",
        "items": "properties.products",
    }
    products = props.get("products")
    if products is not None:
        data["items"] = [_item(p) for p in products] if isinstance(products, list) else products
    return _compact(data), paths


def _purchase_completed(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    # Segment's `revenue` excludes shipping and tax: the customer-value figure.
    return _order(props, ("revenue", "total"))


def _purchase_refunded(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    return _order(props, ("total", "revenue", "amount"))


def _signed_up(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    data = {"email": props.get("email"), "name": props.get("name"), "traits": dict(props)}
    return _compact(data), {"email": "properties.email", "name": "properties.name"}


def _passthrough(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    return dict(props), {}


_TRACK_BUILDERS: Mapping[EventType, Callable[[Mapping[str, Any], Mapping[str, Any]], Built]] = {
    EventType.PURCHASE_COMPLETED: _purchase_completed,
    EventType.PURCHASE_REFUNDED: _purchase_refunded,
    EventType.WEB_SIGNED_UP: _signed_up,
}


def _object(msg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, "Input should be an object")
    return value


def to_cloudevent(
    msg: Any, *, call: str | None, source: str, mapping: SegmentMapping, received_at: datetime
) -> Event:
    """Validate one Segment message as the CLM event it maps to.

    `call` is the route's call type; None (the /v1/batch route) takes it from `type`.
    Raises EventValidationError with paths into the Segment message.
    """
    if not isinstance(msg, Mapping):
        raise _fail("", "message must be a JSON object")
    check_storable(msg)  # before the fields are read: errors name what the sender wrote
    call = call or msg.get("type")
    if call not in CALLS:
        shown = f"'{str(call)[:32]}'" if call is not None else "missing"
        raise _fail("type", f"unsupported Segment call {shown}; supported: {', '.join(CALLS)}")

    anonymous_id = _id(msg.get("anonymousId"))
    if call == "track":
        event_type = mapping.track_type(msg.get("event"))
        props = _object(msg, "properties")
        builder = _TRACK_BUILDERS.get(event_type, _passthrough)
        data, data_paths = builder(msg, props)
        data_paths = data_paths or {"": "properties"}
    elif call == "identify":
        event_type = EventType.WEB_IDENTIFIED
        data = _compact({"traits": dict(_object(msg, "traits")), "anonymous_id": anonymous_id})
        data_paths = {"traits": "traits", "anonymous_id": "anonymousId"}
    else:
        event_type = EventType.WEB_PAGE_VIEWED
        props = _object(msg, "properties")
        title = props.get("title") if props.get("title") is not None else msg.get("name")
        data = _compact({"url": props.get("url"), "title": title, "anonymous_id": anonymous_id})
        data_paths = {"url": "properties.url", "title": "properties.title"}
        data_paths["anonymous_id"] = "anonymousId"

    subject, subject_path = _id(msg.get("userId")), "userId"
    if subject is None and mapping.anonymous_subject:
        subject, subject_path = anonymous_id, "anonymousId"
    time, time_path = _first(msg, "timestamp", "originalTimestamp")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": _id(msg.get("messageId")),
        "source": source,
        "type": event_type.value,
        "subject": subject,
        "time": time if time is not None else received_at,
        "data": data,
    }
    if isinstance(anonymous_id, str) and anonymous_id:
        event["anonymousid"] = anonymous_id  # CloudEvents extension: kept for identity joins
    paths = {
        "id": "messageId",
        "subject": subject_path,
        "time": time_path,
        "anonymousid": "anonymousId",
    }
    try:
        return parse_event({k: v for k, v in event.items() if v is not None})
    except EventValidationError as exc:
        errors = [_segment_error(e, paths, data_paths) for e in exc.errors]
        if subject is None:
            errors = [e for e in errors if e.path != "userId"]
            errors.insert(0, FieldError("userId", _missing_user_reason(mapping)))
        raise EventValidationError(errors) from None


def _missing_user_reason(mapping: SegmentMapping) -> str:
    if mapping.anonymous_subject:
        return "field required (userId or anonymousId): CLM keys every event by customer"
    return "field required: CLM keys every event by customer id; anonymous-only calls are refused"


def _segment_error(
    error: FieldError, paths: Mapping[str, str], data: Mapping[str, str]
) -> FieldError:
    head, _, rest = error.path.partition(".")
    if head != "data":
        return FieldError(paths.get(head, head) + (f".{rest}" if rest else ""), error.reason)
    if "" in data:  # passthrough: data is the properties object
        return FieldError("properties" + (f".{rest}" if rest else ""), error.reason)
    name, _, tail = rest.partition(".")
    if not name:
        return FieldError("properties", error.reason)
    target = data.get(name, f"properties.{name}")
    if name == "items" and tail:
        # data.items.<i>.<field> -> properties.products.<i>.<Segment field>
        index, _, item_field = tail.partition(".")
        renamed = {"unit_price": "price", "sku": "sku"}.get(item_field, item_field)
        tail = f"{index}.{renamed}" if item_field else index
    return FieldError(target + (f".{tail}" if tail else ""), error.reason)
