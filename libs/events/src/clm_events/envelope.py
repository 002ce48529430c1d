"""CloudEvents 1.0 envelope for CLM events: parse, validate, encode (DESIGN.md, "Event envelope").

Every way in (dict, structured JSON, binary mode, Kafka record) ends in `parse_event`, so
all callers get the same rules and the same `EventValidationError`.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from clm_events.catalog import (
    BillingInvoicePaid,
    BillingPaymentFailed,
    BillingSubscriptionCancelled,
    BillingSubscriptionStarted,
    CampaignActionFired,
    EventData,
    EventType,
    IdentityLinked,
    LifecycleCustomersMerged,
    LifecycleScoreModelServed,
    LifecycleScoreUpdated,
    LifecycleStageChanged,
    LifecycleTransitionRetracted,
    PrivacyErasureCompleted,
    PrivacyErasureRequested,
    PurchaseCompleted,
    PurchaseRefunded,
    SupportNpsSubmitted,
    SupportTicketOpened,
    SupportTicketResolved,
    UtcDatetime,
    WebIdentified,
    WebPageViewed,
    WebScreenViewed,
    WebSignedUp,
    WebTracked,
)
from clm_events.storable import UNSTORABLE, is_storable, printable, unstorable

# --- errors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem: `path` is dotted (`data.items.0.quantity`, `time`; "" = whole event)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class EventValidationError(ValueError):
    """An event was rejected; `errors` says where and why (safe to return to the sender).

    `kind` names the rule broken, for metrics and dead-letter reason kinds:
    `invalid_event` (the schema), or `unstorable_text` (see storable.py)."""

    def __init__(self, errors: Sequence[FieldError], kind: str = "invalid_event") -> None:
        self.errors: list[FieldError] = list(errors)
        self.kind = kind
        super().__init__(self.errors)

    def __str__(self) -> str:
        shown = [f"{e.path}: {e.reason}" if e.path else e.reason for e in self.errors[:5]]
        more = len(self.errors) - len(shown)
        return "invalid event: " + "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")

    def to_list(self) -> list[dict[str, str]]:
        return [e.to_dict() for e in self.errors]

    def to_dict(self) -> dict[str, Any]:
        """HTTP 422 body: `{"detail": <summary>, "errors": [{"path", "reason"}, ...]}`."""
        return {"detail": str(self), "errors": self.to_list()}


def _fail(path: str, reason: str) -> EventValidationError:
    return EventValidationError([FieldError(path, reason)])


def _clip(text: str, limit: int = 64) -> str:
    # Offending input is echoed back, logged and stored with dead letters: short, storable.
    return printable(text if len(text) <= limit else text[:limit] + "...")


def check_storable(obj: Any) -> None:
    """Refuse a decoded message holding anything PostgreSQL cannot store (storable.py),
    naming each place; every entry point gets this through parse_event."""
    if not is_storable(obj):
        errors = [FieldError(path, reason) for path, reason in unstorable(obj)]
        raise EventValidationError(errors, kind=UNSTORABLE)


# --- envelope -------------------------------------------------------------------------

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")


def _extension_value(value: Any) -> str | int | bool:
    # CloudEvents JSON format: extension values are strings, integers or booleans.
    if isinstance(value, str | int | bool):
        return value
    raise PydanticCustomError(
        "extension_type", "extension attribute must be a string, integer or boolean"
    )


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _json_content_type(value: str) -> str:
    if not _is_json_media_type(value):
        raise PydanticCustomError(
            "content_type",
            "data must be JSON: datacontenttype should be application/json or end with +json, "
            "got '{got}'",
            {"got": _clip(value)},
        )
    return value


def _unknown_attribute_reason(name: str) -> str:
    if name == "data_base64":
        return "data_base64 is not supported: CLM event data must be JSON"
    return (
        f"unknown attribute '{_clip(name)}'; extension attribute names are "
        "1-20 lowercase letters or digits"
    )


ExtensionValue = Annotated[str | int | bool, PlainValidator(_extension_value)]


class CloudEvent(BaseModel):
    """Attributes common to every CLM event; concrete classes pin `type` and `data`."""

    model_config = ConfigDict(extra="allow")
    # Extension attributes (traceparent, partitionkey, ...) land here, typed.
    __pydantic_extra__: dict[str, ExtensionValue] = Field(init=False)

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    type: str
    # CLM requires subject: it is the customer id and the Kafka key.
    subject: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    time: UtcDatetime
    datacontenttype: Annotated[str, AfterValidator(_json_content_type)] = "application/json"
    dataschema: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    data: EventData

    @model_validator(mode="before")
    @classmethod
    def _known_attributes(cls, value: Any) -> Any:
        # Guard for direct model use; parse_event reports these per attribute instead.
        if isinstance(value, Mapping) and not _ATTRIBUTES.issuperset(value):
            for name in value:
                if not _is_attribute_name(name, _ATTRIBUTES):
                    raise PydanticCustomError("unknown_attribute", _unknown_attribute_reason(name))
        return value


def _is_attribute_name(name: Any, fields: frozenset[str]) -> bool:
    return isinstance(name, str) and (name in fields or _EXTENSION_NAME.fullmatch(name) is not None)


class PurchaseCompletedEvent(CloudEvent):
    type: Literal["purchase.completed"]
    data: PurchaseCompleted


class PurchaseRefundedEvent(CloudEvent):
    type: Literal["purchase.refunded"]
    data: PurchaseRefunded


class BillingSubscriptionStartedEvent(CloudEvent):
    type: Literal["billing.subscription_started"]
    data: BillingSubscriptionStarted


class BillingInvoicePaidEvent(CloudEvent):
    type: Literal["billing.invoice_paid"]
    data: BillingInvoicePaid


class BillingPaymentFailedEvent(CloudEvent):
    type: Literal["billing.payment_failed"]
    data: BillingPaymentFailed


class BillingSubscriptionCancelledEvent(CloudEvent):
    type: Literal["billing.subscription_cancelled"]
    data: BillingSubscriptionCancelled


class SupportTicketOpenedEvent(CloudEvent):
    type: Literal["support.ticket_opened"]
    data: SupportTicketOpened


class SupportTicketResolvedEvent(CloudEvent):
    type: Literal["support.ticket_resolved"]
    data: SupportTicketResolved


class SupportNpsSubmittedEvent(CloudEvent):
    type: Literal["support.nps_submitted"]
    data: SupportNpsSubmitted


class WebSignedUpEvent(CloudEvent):
    type: Literal["web.signed_up"]
    data: WebSignedUp


class WebIdentifiedEvent(CloudEvent):
    type: Literal["web.identified"]
    data: WebIdentified


class WebPageViewedEvent(CloudEvent):
    type: Literal["web.page_viewed"]
    data: WebPageViewed


class WebScreenViewedEvent(CloudEvent):
    type: Literal["web.screen_viewed"]
    data: WebScreenViewed


class WebTrackedEvent(CloudEvent):
    type: Literal["web.tracked"]
    data: WebTracked


class IdentityLinkedEvent(CloudEvent):
    type: Literal["identity.linked"]
    data: IdentityLinked


class LifecycleStageChangedEvent(CloudEvent):
    type: Literal["lifecycle.stage_changed"]
    data: LifecycleStageChanged


class LifecycleTransitionRetractedEvent(CloudEvent):
    type: Literal["lifecycle.transition_retracted"]
    data: LifecycleTransitionRetracted


class LifecycleCustomersMergedEvent(CloudEvent):
    type: Literal["lifecycle.customers_merged"]
    data: LifecycleCustomersMerged


class LifecycleScoreUpdatedEvent(CloudEvent):
    type: Literal["lifecycle.score_updated"]
    data: LifecycleScoreUpdated


class LifecycleScoreModelServedEvent(CloudEvent):
    type: Literal["lifecycle.score_model_served"]
    data: LifecycleScoreModelServed


class CampaignActionFiredEvent(CloudEvent):
    type: Literal["campaign.action_fired"]
    data: CampaignActionFired


class PrivacyErasureRequestedEvent(CloudEvent):
    type: Literal["privacy.erasure_requested"]
    data: PrivacyErasureRequested


class PrivacyErasureCompletedEvent(CloudEvent):
    type: Literal["privacy.erasure_completed"]
    data: PrivacyErasureCompleted


Event = Annotated[
    PurchaseCompletedEvent
    | PurchaseRefundedEvent
    | BillingSubscriptionStartedEvent
    | BillingInvoicePaidEvent
    | BillingPaymentFailedEvent
    | BillingSubscriptionCancelledEvent
    | SupportTicketOpenedEvent
    | SupportTicketResolvedEvent
    | SupportNpsSubmittedEvent
    | WebSignedUpEvent
    | WebIdentifiedEvent
    | WebPageViewedEvent
    | WebScreenViewedEvent
    | WebTrackedEvent
    | IdentityLinkedEvent
    | LifecycleStageChangedEvent
    | LifecycleTransitionRetractedEvent
    | LifecycleCustomersMergedEvent
    | LifecycleScoreUpdatedEvent
    | LifecycleScoreModelServedEvent
    | CampaignActionFiredEvent
    | PrivacyErasureRequestedEvent
    | PrivacyErasureCompletedEvent,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

_TAGS = frozenset(t.value for t in EventType)
_SUPPORTED = ", ".join(t.value for t in EventType)
# Looked up per attribute of every event: a frozenset, not the model_fields property.
_ATTRIBUTES = frozenset(CloudEvent.model_fields)


# --- parsing --------------------------------------------------------------------------


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field required"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return "Input should be an object"
    return str(error["msg"])


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        # A discriminated union puts the tag first in loc; senders never wrote it.
        loc = error["loc"][1:] if error["loc"] and error["loc"][0] in _TAGS else error["loc"]
        errors.append(FieldError(".".join(str(part) for part in loc), _reason(error)))
    return errors


def _type_error(value: Any) -> FieldError | None:
    if value is None:
        return FieldError("type", f"field required; supported: {_SUPPORTED}")
    if not isinstance(value, str):
        return FieldError("type", f"event type must be a string; supported: {_SUPPORTED}")
    if value not in _TAGS:
        return FieldError("type", f"unknown event type '{_clip(value)}'; supported: {_SUPPORTED}")
    return None


def parse_event(obj: Mapping[str, Any]) -> Event:
    """Validate a decoded event (e.g. a JSON object); raise EventValidationError listing all
    problems found."""
    if not isinstance(obj, Mapping):
        raise _fail("", "event must be a JSON object")
    check_storable(obj)
    # Without a known type there is no schema to check the rest against: one clear error.
    type_error = _type_error(obj.get("type"))
    if type_error is not None:
        raise EventValidationError([type_error])
    errors: list[FieldError] = []
    known: Mapping[str, Any] = obj
    if not _ATTRIBUTES.issuperset(obj):  # extensions or unknown names: sort them out
        known = {}
        for name, value in obj.items():
            if _is_attribute_name(name, _ATTRIBUTES):
                known[name] = value
            else:
                errors.append(FieldError(_clip(str(name)), _unknown_attribute_reason(str(name))))
    try:
        event = EVENT_ADAPTER.validate_python(known)
    except ValidationError as exc:
        errors.extend(_field_errors(exc))
    if errors:
        raise EventValidationError(errors)
    return event


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(raw: bytes | str, path: str, what: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise _fail(path, f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _fail(
            path, f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # NaN/Infinity, integers too long to convert
        raise _fail(path, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _fail(path, f"{what} is nested too deeply") from None


def parse_structured(raw: bytes | str) -> Event:
    """Structured content mode: the whole CloudEvent as one JSON object."""
    obj = _load_json(raw, "", "event")
    if not isinstance(obj, dict):
        raise _fail("", f"event must be a JSON object, got {type(obj).__name__}")
    return parse_event(obj)


def parse_binary(attributes: Mapping[str, str], data: bytes, content_type: str | None) -> Event:
    """Binary content mode: attributes come from `ce_`/`ce-` headers (prefix already
    stripped), `data` is the message body, `content_type` its media type."""
    # HTTP header names are case-insensitive; CloudEvents attribute names are lowercase.
    obj: dict[str, Any] = {name.lower(): value for name, value in attributes.items()}
    if "data" in obj:
        raise _fail("data", "data is the message body, not an attribute, in binary mode")
    if content_type is not None:
        if not _is_json_media_type(content_type):
            raise _fail(
                "datacontenttype",
                f"data must be JSON: content type should be application/json or end with "
                f"+json, got '{_clip(content_type)}'",
            )
        obj["datacontenttype"] = content_type
    if data:  # an empty body means no data; parse_event then reports it missing
        obj["data"] = _load_json(data, "data", "data")
    return parse_event(obj)


def decode_kafka_record(headers: Sequence[tuple[str, bytes]], value: bytes | None) -> Event:
    """Kafka protocol binding: binary mode if a `ce_specversion` header is present,
    structured mode (the record value) otherwise."""
    if not any(key == "ce_specversion" for key, _ in headers):
        if value is None:
            raise _fail("", "record has no value")
        return parse_structured(value)
    attributes: dict[str, str] = {}
    content_type: str | None = None
    seen: set[str] = set()
    for key, raw in headers:
        is_content_type = key.lower() == "content-type"
        if not (key.startswith("ce_") or is_content_type):
            continue
        name = "datacontenttype" if is_content_type else key[3:]
        if key.lower() in seen:  # ambiguous: refuse rather than guess which one counts
            raise _fail(name, f"header '{_clip(key)}' appears more than once")
        seen.add(key.lower())
        try:
            text = bytes(raw).decode("utf-8")
        except (UnicodeDecodeError, TypeError):
            raise _fail(name, f"header '{_clip(key)}' is not a valid UTF-8 value") from None
        if is_content_type:
            content_type = text
        else:
            attributes[name] = text
    return parse_binary(attributes, value or b"", content_type)


# --- building and encoding ------------------------------------------------------------


def encode_structured(event: CloudEvent) -> bytes:
    """Compact structured-mode JSON; money stays a decimal string, so no precision is lost."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")


def new_event(
    type: EventType | str,
    *,
    id: str,
    source: str,
    subject: str,
    data: Mapping[str, Any] | BaseModel,
    time: datetime | None = None,
) -> Event:
    """Build an event (e.g. a derived one) with a caller-chosen stable `id`, validated like
    any received event; `time` defaults to now (UTC)."""
    payload = data.model_dump() if isinstance(data, BaseModel) else dict(data)
    return parse_event(
        {
            "specversion": "1.0",
            "id": id,
            "source": source,
            "type": str(type),
            "subject": subject,
            "time": datetime.now(UTC) if time is None else time,
            "data": payload,
        }
    )


def idempotency_key(event: CloudEvent) -> tuple[str, str]:
    """(source, id): the same pair seen twice is the same event."""
    return (event.source, event.id)
