"""Segment spec calls (track, identify, page, screen, group, alias) as CLM CloudEvents.

A message gives zero, one or two events: `group` gives none (CLM keeps no accounts),
`identify` with both a userId and an anonymousId gives `web.identified` and the
`identity.linked` that joins the two ids, `alias` gives `identity.linked` alone.

Segment's e-commerce v2 names map to CLM types; a track call whose name already is a CLM
type passes its properties through as `data`; every other name is a `web.tracked`.
Errors name the Segment field the sender wrote (`properties.revenue`), not the CloudEvent
field it became (`data.amount`).
"""

from __future__ import annotations

import hashlib
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
CALLS = ("track", "identify", "page", "screen", "group", "alias")
PRODUCER_TYPES = tuple(t for t in EventType if t not in DERIVED_TYPES)


@dataclass(frozen=True)
class SegmentMapping:
    track_events: Mapping[str, EventType] = field(default_factory=lambda: DEFAULT_TRACK_EVENTS)

    def track_type(self, name: Any) -> EventType:
        if not isinstance(name, str) or not name:
            raise _fail("event", "field required: the name of the action")
        mapped = self.track_events.get(name)
        if mapped is not None:
            return mapped
        if name in PRODUCER_TYPES:
            return EventType(name)
        return EventType.WEB_TRACKED


def _fail(path: str, reason: str) -> EventValidationError:
    return EventValidationError([FieldError(path, reason)])


def _id(value: Any) -> Any:
    # Segment senders often use numeric ids; CLM ids are strings. An empty id is no id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None if value == "" else value


def _first(props: Mapping[str, Any], *names: str) -> tuple[Any, str]:
    for name in names:
        if props.get(name) is not None:
            return props[name], name
    return None, names[0]


def _compact(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _object(msg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, "Input should be an object")
    return value


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


def _tracked(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    data = {"name": msg.get("event"), "properties": dict(props)}
    return data, {"name": "event", "properties": "properties"}


def _passthrough(msg: Mapping[str, Any], props: Mapping[str, Any]) -> Built:
    return dict(props), {"": "properties"}


_TRACK_BUILDERS: Mapping[EventType, Callable[[Mapping[str, Any], Mapping[str, Any]], Built]] = {
    EventType.PURCHASE_COMPLETED: _purchase_completed,
    EventType.PURCHASE_REFUNDED: _purchase_refunded,
    EventType.WEB_SIGNED_UP: _signed_up,
    EventType.WEB_TRACKED: _tracked,
}


def _track(msg: Mapping[str, Any], mapping: SegmentMapping) -> tuple[EventType, Built]:
    event_type = mapping.track_type(msg.get("event"))
    builder = _TRACK_BUILDERS.get(event_type, _passthrough)
    return event_type, builder(msg, _object(msg, "properties"))


def _page(msg: Mapping[str, Any]) -> Built:
    props = _object(msg, "properties")
    # analytics.js sends the url in both places; server libraries often only in context.
    url = props.get("url")
    if url is None:
        url = _object(_object(msg, "context"), "page").get("url")
    title = props.get("title") if props.get("title") is not None else msg.get("name")
    return _compact({"url": url, "title": title}), {
        "url": "properties.url",
        "title": "properties.title",
    }


def _screen(msg: Mapping[str, Any]) -> Built:
    props = _object(msg, "properties")
    name = msg.get("name") if msg.get("name") is not None else props.get("name")
    data = _compact({"name": name, "properties": dict(props)})
    return data, {"name": "name", "properties": "properties"}


def link_id(message_id: Any) -> Any:
    """The id of the `identity.linked` an identify call gives besides its `web.identified`
    (which has the messageId): derived, so a retried call gives the same one."""
    if not isinstance(message_id, str):
        return message_id  # refused as the messageId it is
    if len(message_id) <= 250:
        return f"{message_id}:link"
    return "link:" + hashlib.sha256(message_id.encode()).hexdigest()


@dataclass(frozen=True)
class _Message:
    """What every event of one Segment message shares."""

    msg: Mapping[str, Any]
    call: str
    source: str
    received_at: datetime

    def event(
        self,
        event_type: EventType,
        built: Built,
        *,
        subject: tuple[Any, str],
        anonymous_id: Any,
        event_id: Any = None,
    ) -> Event:
        data, data_paths = built
        if isinstance(anonymous_id, str) and event_type.value.startswith("web."):
            data = {**data, "anonymous_id": anonymous_id}
            data_paths = {**data_paths, "anonymous_id": "anonymousId"}
        time, time_path = _first(self.msg, "timestamp", "originalTimestamp")
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": _id(self.msg.get("messageId")) if event_id is None else event_id,
            "source": self.source,
            "type": event_type.value,
            "subject": subject[0],
            "time": time if time is not None else self.received_at,
            "data": data,
        }
        if isinstance(anonymous_id, str):
            event["anonymousid"] = anonymous_id  # CloudEvents extension: kept for identity joins
        paths = {
            "id": "messageId",
            "subject": subject[1],
            "time": time_path,
            "anonymousid": "anonymousId",
        }
        try:
            return parse_event({k: v for k, v in event.items() if v is not None})
        except EventValidationError as exc:
            errors = [_segment_error(e, paths, data_paths) for e in exc.errors]
            if subject[0] is None and self.call != "alias":
                errors = [e for e in errors if e.path != subject[1]]
                errors.insert(0, FieldError(subject[1], _NO_SUBJECT))
            raise EventValidationError(errors) from None


_NO_SUBJECT = "field required (userId or anonymousId): CLM keys every event by customer"


def to_cloudevents(
    msg: Any, *, call: str | None, source: str, mapping: SegmentMapping, received_at: datetime
) -> list[Event]:
    """Validate one Segment message as the CLM events it maps to (possibly none).

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
    if call == "group":
        return []  # accounts: nothing CLM keeps

    message = _Message(msg, call, source, received_at)
    user_id, anonymous_id = _id(msg.get("userId")), _id(msg.get("anonymousId"))
    if call == "alias":
        # previousId (often the anonymous id) is from now on userId.
        previous = {"anonymous_id": _id(msg.get("previousId"))}
        built = _compact(previous), {"anonymous_id": "previousId"}
        return [
            message.event(
                EventType.IDENTITY_LINKED,
                built,
                subject=(user_id, "userId"),
                anonymous_id=anonymous_id,
            )
        ]

    # Without a userId the anonymous id is the subject until a link names the customer.
    subject = (anonymous_id, "anonymousId") if user_id is None else (user_id, "userId")
    if subject[0] is None:
        subject = (None, "userId")
    if call == "track":
        event_type, built = _track(msg, mapping)
    elif call == "identify":
        event_type = EventType.WEB_IDENTIFIED
        built = {"traits": dict(_object(msg, "traits"))}, {"traits": "traits"}
    elif call == "page":
        event_type, built = EventType.WEB_PAGE_VIEWED, _page(msg)
    else:
        event_type, built = EventType.WEB_SCREEN_VIEWED, _screen(msg)
    events = [message.event(event_type, built, subject=subject, anonymous_id=anonymous_id)]

    if call == "identify" and user_id is not None and anonymous_id not in (None, user_id):
        link = {"anonymous_id": anonymous_id}, {"anonymous_id": "anonymousId"}
        events.append(
            message.event(
                EventType.IDENTITY_LINKED,
                link,
                subject=subject,
                anonymous_id=anonymous_id,
                event_id=link_id(_id(msg.get("messageId"))),
            )
        )
    return events


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
