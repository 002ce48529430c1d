"""Scoring reads the web topic for identity links only: page views and the like are passed
over without being validated (they are most of the traffic and never move a score),
while links, purchases and refunds are validated in full, so a bad one is dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from clm_events.envelope import (
    EventValidationError,
    IdentityLinkedEvent,
    PurchaseRefundedEvent,
    WebPageViewedEvent,
)
from clm_scoring.handlers import decode

STRUCTURED = [("content-type", b"application/cloudevents+json")]


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "e-1",
        "source": "web",
        "type": kind,
        "subject": "anon-1",
        "time": "2026-11-20T10:15:00Z",
        "data": data,
    }


def _raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_web_activity_is_passed_over_unvalidated_with_what_the_runner_needs() -> None:
    # A page view without its required url would be refused by a full decode.
    for event in (_event("web.page_viewed"), _event("web.tracked", name=["not", "a", "name"])):
        passed = decode(STRUCTURED, _raw(event))
        assert not isinstance(passed, WebPageViewedEvent)
        assert (passed.source, passed.id, passed.subject) == ("web", "e-1", "anon-1")
        assert passed.time == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


def test_links_purchases_and_refunds_are_validated_in_full() -> None:
    link = decode(STRUCTURED, _raw(_event("identity.linked", anonymous_id="anon-9")))
    assert isinstance(link, IdentityLinkedEvent) and link.data.anonymous_id == "anon-9"
    refund = _event("purchase.refunded", order_id="o-1", amount="5.00", currency="EUR")
    assert isinstance(decode(STRUCTURED, _raw(refund)), PurchaseRefundedEvent)
    with pytest.raises(EventValidationError, match="anonymous_id"):
        decode(STRUCTURED, _raw(_event("identity.linked")))


@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        _raw({k: v for k, v in _event("web.page_viewed", url="/").items() if k != "id"}),
        _raw({**_event("web.page_viewed", url="/"), "time": "yesterday"}),
        _raw({**_event("web.page_viewed", url="/"), "time": "2026-11-20T10:15:00"}),
    ],
)
def test_a_message_without_a_usable_id_or_time_is_refused_as_the_full_decoder_refuses_it(
    value: bytes,
) -> None:
    with pytest.raises(EventValidationError):
        decode(STRUCTURED, value)


def test_binary_mode_is_decoded_in_full() -> None:
    event = _event("web.page_viewed", url="/")
    headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data"]
    decoded = decode([*headers, ("content-type", b"application/json")], _raw(event["data"]))
    assert isinstance(decoded, WebPageViewedEvent)
