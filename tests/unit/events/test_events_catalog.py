"""Event catalog: the set of types, their domains and data rules."""

from decimal import Decimal

import pytest
from pydantic import ValidationError

from clm_events.catalog import (
    DATA_MODEL_OF_TYPE,
    DOMAIN_OF_TYPE,
    BillingSubscriptionStarted,
    EventType,
    PurchaseCompleted,
    Stage,
    domain_of,
    topic_domain,
)

V1_TYPES = {
    "purchase.completed",
    "purchase.refunded",
    "billing.subscription_started",
    "billing.invoice_paid",
    "billing.payment_failed",
    "billing.subscription_cancelled",
    "support.ticket_opened",
    "support.ticket_resolved",
    "support.nps_submitted",
    "web.signed_up",
    "web.identified",
    "web.page_viewed",
    "web.screen_viewed",
    "web.tracked",
    "identity.linked",
}
DERIVED = {
    "lifecycle.stage_changed",
    "lifecycle.transition_retracted",
    "lifecycle.customers_merged",
    "lifecycle.score_updated",
    "lifecycle.score_model_served",
    "campaign.action_fired",
    "privacy.erasure_requested",
    "privacy.erasure_completed",
}


def test_catalog_has_every_design_type_and_a_data_model_for_each() -> None:
    assert {t.value for t in EventType} == V1_TYPES | DERIVED
    assert set(DATA_MODEL_OF_TYPE) == set(EventType)


def test_stages_match_design() -> None:
    assert [s.value for s in Stage] == [
        "prospect", "onboarding", "active", "loyal", "advocate", "at_risk", "lapsed", "won_back",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("event_type", "domain"),
    [
        ("purchase.refunded", "purchase"),
        (EventType.BILLING_INVOICE_PAID, "billing"),
        ("support.nps_submitted", "support"),
        ("web.page_viewed", "web"),
        ("lifecycle.score_updated", "lifecycle"),
        ("campaign.action_fired", "campaign"),
    ],
)
def test_domain_of_is_the_type_prefix(event_type: str, domain: str) -> None:
    assert domain_of(event_type) == domain
    assert set(DOMAIN_OF_TYPE.values()) == {
        "purchase", "billing", "support", "web", "identity", "lifecycle", "campaign", "privacy",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        ("purchase.completed", "purchase"),
        ("web.tracked", "web"),
        ("web.screen_viewed", "web"),
        ("identity.linked", "web"),  # a link travels with the web activity it joins
    ],
)
def test_topic_domain_routes_identity_links_with_web_events(event_type: str, topic: str) -> None:
    assert topic_domain(event_type) == topic


def test_domain_of_unknown_type_raises() -> None:
    with pytest.raises(ValueError):
        domain_of("purchase.exploded")


def test_data_models_keep_producer_extra_fields() -> None:
    data = PurchaseCompleted.model_validate(
        {"order_id": "1", "amount": 10, "currency": "eur", "coupon": "XMAS"}
    )
    assert data.model_extra == {"coupon": "XMAS"}
    assert data.currency == "EUR"
    assert data.amount == Decimal(10)


def test_subscription_amount_without_currency_is_rejected() -> None:
    with pytest.raises(ValidationError, match="currency is required"):
        BillingSubscriptionStarted.model_validate(
            {"subscription_id": "s1", "plan": "pro", "amount": "9.99"}
        )
