"""Catalog of CLM event types and their `data` payloads (DESIGN.md, "Event envelope")."""

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_extra_types.currency_code import ISO4217


class EventType(StrEnum):
    PURCHASE_COMPLETED = "purchase.completed"
    PURCHASE_REFUNDED = "purchase.refunded"
    BILLING_SUBSCRIPTION_STARTED = "billing.subscription_started"
    BILLING_INVOICE_PAID = "billing.invoice_paid"
    BILLING_PAYMENT_FAILED = "billing.payment_failed"
    BILLING_SUBSCRIPTION_CANCELLED = "billing.subscription_cancelled"
    SUPPORT_TICKET_OPENED = "support.ticket_opened"
    SUPPORT_TICKET_RESOLVED = "support.ticket_resolved"
    SUPPORT_NPS_SUBMITTED = "support.nps_submitted"
    WEB_SIGNED_UP = "web.signed_up"
    WEB_IDENTIFIED = "web.identified"
    WEB_PAGE_VIEWED = "web.page_viewed"
    WEB_SCREEN_VIEWED = "web.screen_viewed"
    WEB_TRACKED = "web.tracked"
    IDENTITY_LINKED = "identity.linked"
    # Derived: published by CLM itself, never accepted from producers.
    LIFECYCLE_STAGE_CHANGED = "lifecycle.stage_changed"
    LIFECYCLE_TRANSITION_RETRACTED = "lifecycle.transition_retracted"
    LIFECYCLE_CUSTOMERS_MERGED = "lifecycle.customers_merged"
    LIFECYCLE_SCORE_UPDATED = "lifecycle.score_updated"
    LIFECYCLE_SCORE_MODEL_SERVED = "lifecycle.score_model_served"
    CAMPAIGN_ACTION_FIRED = "campaign.action_fired"
    PRIVACY_ERASURE_REQUESTED = "privacy.erasure_requested"
    PRIVACY_ERASURE_COMPLETED = "privacy.erasure_completed"


DERIVED_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.LIFECYCLE_STAGE_CHANGED,
        EventType.LIFECYCLE_TRANSITION_RETRACTED,
        EventType.LIFECYCLE_CUSTOMERS_MERGED,
        EventType.LIFECYCLE_SCORE_UPDATED,
        EventType.LIFECYCLE_SCORE_MODEL_SERVED,
        EventType.CAMPAIGN_ACTION_FIRED,
        EventType.PRIVACY_ERASURE_REQUESTED,
        EventType.PRIVACY_ERASURE_COMPLETED,
    }
)


class Stage(StrEnum):
    PROSPECT = "prospect"
    ONBOARDING = "onboarding"
    ACTIVE = "active"
    LOYAL = "loyal"
    ADVOCATE = "advocate"
    AT_RISK = "at_risk"
    LAPSED = "lapsed"
    WON_BACK = "won_back"


DOMAIN_OF_TYPE: Mapping[EventType, str] = {t: t.value.partition(".")[0] for t in EventType}


def domain_of(event_type: EventType | str) -> str:
    """Domain prefix of a type ("purchase", "billing", ...); ValueError if the type is unknown."""
    return DOMAIN_OF_TYPE[EventType(event_type)]


def topic_domain(event_type: EventType | str) -> str:
    """The domain topic a producer type travels on: its own domain, except identity links,
    which go with the web activity they join (`clm.events.web`); ValueError if unknown."""
    domain = domain_of(event_type)
    return "web" if domain == "identity" else domain


# --- field types shared by the data models --------------------------------------------

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# max_digits also bounds the exponent, so "1e999999" cannot slip in as a "finite" amount.
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=30)]
PositiveMoney = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=30)]
# strict: a bool or "3" is a producer bug, not a count.
Count = Annotated[int, Field(strict=True, ge=1)]
Probability = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]

# RFC 3339 date-time; pydantic alone would also take unix numbers and date-only strings.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
_NAIVE_REASON = "timestamp must include a timezone offset, e.g. '2026-11-20T10:15:00Z'"


def _timestamp(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError("timezone_missing", _NAIVE_REASON)
        return value
    if isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise PydanticCustomError(
                "timestamp_format",
                "Input should be an RFC 3339 timestamp, e.g. '2026-11-20T10:15:00Z'",
            )
        if match["offset"] is None:
            raise PydanticCustomError("timezone_missing", _NAIVE_REASON)
        return value
    raise PydanticCustomError("timestamp_type", "Input should be an RFC 3339 timestamp string")


def _to_utc(value: datetime) -> datetime:
    # Equal instants then compare and serialise equally ("...Z").
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_to_utc), BeforeValidator(_timestamp)]


class EventData(BaseModel):
    """Base of every `data` model: producers may add fields, declared ones are checked."""

    model_config = ConfigDict(extra="allow")


class Item(EventData):
    sku: Id
    category: str | None = None
    quantity: Count = 1
    unit_price: Money | None = None


# --- purchase -------------------------------------------------------------------------


class PurchaseCompleted(EventData):
    order_id: Id
    amount: Money
    currency: ISO4217
    items: list[Item] | None = None


class PurchaseRefunded(EventData):
    order_id: Id
    amount: PositiveMoney
    currency: ISO4217


# --- billing --------------------------------------------------------------------------


class BillingSubscriptionStarted(EventData):
    subscription_id: Id
    plan: Id
    amount: Money | None = None
    currency: ISO4217 | None = None
    interval: str | None = None

    @model_validator(mode="after")
    def _amount_needs_currency(self) -> Self:
        # An amount without a currency cannot be compared or summed with anything.
        if self.amount is not None and self.currency is None:
            raise PydanticCustomError(
                "currency_missing", "currency is required when amount is given"
            )
        return self


class BillingInvoicePaid(EventData):
    invoice_id: Id
    amount: Money
    currency: ISO4217


class BillingPaymentFailed(EventData):
    invoice_id: Id
    amount: Money
    currency: ISO4217
    reason: str | None = None
    attempt: Count | None = None


class BillingSubscriptionCancelled(EventData):
    subscription_id: Id
    reason: str | None = None


# --- support --------------------------------------------------------------------------


class SupportTicketOpened(EventData):
    ticket_id: Id
    priority: Literal["low", "normal", "high", "urgent"] | None = None
    channel: str | None = None


class SupportTicketResolved(EventData):
    ticket_id: Id
    satisfaction: Annotated[int, Field(strict=True, ge=1, le=5)] | None = None


class SupportNpsSubmitted(EventData):
    score: Annotated[int, Field(strict=True, ge=0, le=10)]
    comment: str | None = None


# --- web ------------------------------------------------------------------------------


class WebSignedUp(EventData):
    email: str | None = None
    name: str | None = None
    traits: dict[str, Any] | None = None


class WebIdentified(EventData):
    traits: dict[str, Any] | None = None
    anonymous_id: Id | None = None


class WebPageViewed(EventData):
    url: Annotated[str, StringConstraints(min_length=1)]
    title: str | None = None
    anonymous_id: Id | None = None


class WebScreenViewed(EventData):
    """A screen of a mobile app (Segment `screen`)."""

    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    anonymous_id: Id | None = None


class WebTracked(EventData):
    """A named action without a CLM meaning of its own ("Product Viewed"): rules and
    triggers count it and read its properties."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    properties: dict[str, Any] = Field(default_factory=dict)
    anonymous_id: Id | None = None


# --- identity -------------------------------------------------------------------------


class IdentityLinked(EventData):
    """From now on `anonymous_id` is the event's subject (the known customer): what was
    kept under the anonymous id belongs to the customer."""

    anonymous_id: Id


# --- derived (published by CLM) -------------------------------------------------------


class LifecycleStageChanged(EventData):
    from_stage: Stage | None = None  # None on the customer's first classification
    to_stage: Stage
    at: UtcDatetime
    cause: str
    facts: dict[str, Any] = Field(default_factory=dict)
    model_version: Annotated[int, Field(strict=True)] | None = None
    # The transition's own id: the event id too, unless the transition was retracted
    # before and is published again (then the event id carries a suffix).
    transition_id: Id | None = None
    # 1 for the customer's first entry into `to_stage`, 2 for the second, ...: a
    # transition a late event rewrote and a replay re-created has the same entry.
    entry: Annotated[int, Field(strict=True, ge=1)] | None = None
    # "backfill" when a backfill published it (campaigns then send nothing unless the
    # backfill was asked to, `send_actions`); absent for live processing.
    origin: Literal["backfill"] | None = None
    send_actions: bool | None = None


class LifecycleTransitionRetracted(EventData):
    """A published transition that a late event rewrote out of the customer's history."""

    transition_id: Id
    from_stage: Stage | None = None
    to_stage: Stage
    at: UtcDatetime
    cause: str


class LifecycleCustomersMerged(EventData):
    """The stage engine merged what it held under `anonymous_id` into the event's subject
    (an `identity.linked` reached it). Published on the transitions topic keyed by the
    known customer, before the transitions the merge rebuilt, so a consumer of that
    topic learns of the merge before it sees them; the anonymous id's own transitions
    are retracted under the anonymous id."""

    anonymous_id: Id


RFM_SEGMENTS = (
    "Champions", "Loyal", "Potential loyalist", "New", "Promising", "Need attention",
    "About to sleep", "At risk", "Can't lose", "Hibernating", "Lost",
)  # fmt: skip
Quintile = Annotated[int, Field(strict=True, ge=1, le=5)]


class LifecycleScoreUpdated(EventData):
    clv: Money
    churn_probability: Probability
    p_alive: Probability
    expected_purchases: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
    model: str
    # RFM: quintiles 1-5 over the current customer base (5: most recent, most frequent,
    # most spent), the three-digit cell ("545") and its named segment; absent until
    # scoring has cut points.
    rfm_recency: Quintile | None = None
    rfm_frequency: Quintile | None = None
    rfm_monetary: Quintile | None = None
    rfm_cell: Annotated[str, StringConstraints(pattern=r"^[1-5]{3}$")] | None = None
    rfm_segment: Literal[RFM_SEGMENTS] | None = None  # type: ignore[valid-type]


CutPoints = Annotated[
    list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=4, max_length=4)
]


class RfmCuts(EventData):
    """Four ascending cut points per measure, and their version in scoring."""

    version: Annotated[int, Field(strict=True, ge=1)]
    recency: CutPoints
    frequency: CutPoints
    monetary: CutPoints


class LifecycleScoreModelServed(EventData):
    """The score model scoring serves from now on (clm_events.scoremodel.ServedModel):
    the stage engine evaluates the scores its rules read under it."""

    version: Annotated[int, Field(strict=True, ge=1)]
    model: Literal["bgnbd", "pareto_nbd", "heuristic"]
    estimator: str | None = None
    time_unit: Literal["day", "week"]
    purchase_params: dict[str, Annotated[float, Field(allow_inf_nan=False)]] | None = None
    spend_params: dict[str, Annotated[float, Field(allow_inf_nan=False)]] | None = None
    typical_gap: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    horizon_months: Annotated[int, Field(strict=True, ge=1, le=120)]
    monthly_discount_rate: Annotated[float, Field(ge=0, le=1)]
    clv_top_decile: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    fitted_at: UtcDatetime | None = None
    # The RFM cut points scoring scores under (clm_events.rfm.Cuts); absent before any,
    # and in announcements of releases before RFM.
    rfm: RfmCuts | None = None


class CampaignActionFired(EventData):
    trigger_id: Id
    action_id: Id
    channel: Literal["webhook", "email", "kafka"]
    status: str


# --- privacy (clm.privacy) ---------------------------------------------------------------


class PrivacyErasureRequested(EventData):
    """Erase everything held about `customer_ids`: the customer and the anonymous ids
    linked to it. Published by ingest, keyed by the first id; every service erases from
    its own schema and answers with `privacy.erasure_completed`."""

    request_id: Id
    customer_ids: Annotated[list[Id], Field(min_length=1, max_length=1000)]


class PrivacyErasureCompleted(EventData):
    """One service finished an erasure. Subject and key are the request id, never a
    customer id, so no outbox or topic keeps the person's id for the answer."""

    request_id: Id
    service: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    erased: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


DATA_MODEL_OF_TYPE: Mapping[EventType, type[EventData]] = {
    EventType.PURCHASE_COMPLETED: PurchaseCompleted,
    EventType.PURCHASE_REFUNDED: PurchaseRefunded,
    EventType.BILLING_SUBSCRIPTION_STARTED: BillingSubscriptionStarted,
    EventType.BILLING_INVOICE_PAID: BillingInvoicePaid,
    EventType.BILLING_PAYMENT_FAILED: BillingPaymentFailed,
    EventType.BILLING_SUBSCRIPTION_CANCELLED: BillingSubscriptionCancelled,
    EventType.SUPPORT_TICKET_OPENED: SupportTicketOpened,
    EventType.SUPPORT_TICKET_RESOLVED: SupportTicketResolved,
    EventType.SUPPORT_NPS_SUBMITTED: SupportNpsSubmitted,
    EventType.WEB_SIGNED_UP: WebSignedUp,
    EventType.WEB_IDENTIFIED: WebIdentified,
    EventType.WEB_PAGE_VIEWED: WebPageViewed,
    EventType.WEB_SCREEN_VIEWED: WebScreenViewed,
    EventType.WEB_TRACKED: WebTracked,
    EventType.IDENTITY_LINKED: IdentityLinked,
    EventType.LIFECYCLE_STAGE_CHANGED: LifecycleStageChanged,
    EventType.LIFECYCLE_TRANSITION_RETRACTED: LifecycleTransitionRetracted,
    EventType.LIFECYCLE_CUSTOMERS_MERGED: LifecycleCustomersMerged,
    EventType.LIFECYCLE_SCORE_UPDATED: LifecycleScoreUpdated,
    EventType.LIFECYCLE_SCORE_MODEL_SERVED: LifecycleScoreModelServed,
    EventType.CAMPAIGN_ACTION_FIRED: CampaignActionFired,
    EventType.PRIVACY_ERASURE_REQUESTED: PrivacyErasureRequested,
    EventType.PRIVACY_ERASURE_COMPLETED: PrivacyErasureCompleted,
}
