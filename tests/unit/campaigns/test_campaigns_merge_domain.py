"""Merging an anonymous visitor into a customer, without I/O: the projection merge, and a
batch that holds the visitor's transition, the merge and the customer's rebuilt one."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from clm_campaigns.domain.policy import GlobalCap
from clm_campaigns.domain.projection import CustomerState, merge
from clm_campaigns.domain.triggers import TriggerDefinition, compile_trigger
from clm_campaigns.handlers import Campaigns, TriggerCache
from clm_events.envelope import new_event

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_customers_traits_win_and_the_visitors_fill_the_gaps_once() -> None:
    known = CustomerState(
        "cust-1",
        traits={"email": "ada@example.com", "name": None},
        recent_purchases=[{"order_id": "o2", "time": "2026-02-02"}],
    )
    visitor = CustomerState(
        "anon-1",
        traits={"email": "old@example.com", "name": "Ada", "locale": "de-DE"},
        scores={"clv": 10.0},
        scores_at=NOW,
        recent_purchases=[
            {"order_id": "o1", "time": "2026-01-01"},
            {"order_id": "o2", "time": "2026-02-02"},
        ],
    )
    merge(known, visitor)
    assert known.traits == {"email": "ada@example.com", "name": "Ada", "locale": "de-DE"}
    assert known.scores == {"clv": 10.0}
    assert [p["order_id"] for p in known.recent_purchases] == ["o2", "o1"]
    once = copy.deepcopy(known)
    merge(known, visitor)
    assert known == once


def test_a_visitors_pending_welcome_in_the_merging_batch_is_retracted_for_the_customer() -> None:
    definition = TriggerDefinition.model_validate(
        {
            "name": "welcome",
            "on": {"kind": "transition", "to_stage": "onboarding"},
            "action": {"channel": "kafka", "topic": "t", "payload": "{{ customer.id }}"},
            "delay_seconds": 60,
            "reentry": {"mode": "once"},
        }
    )
    trigger = compile_trigger("trg-welcome", 1, definition)
    campaigns = Campaigns(TriggerCache(), "actions", GlobalCap(5, timedelta(days=1)), "UTC")

    def onboarded(customer: str, tid: str) -> object:
        data = {"from_stage": None, "to_stage": "onboarding", "at": NOW, "cause": "t",
                "facts": {}, "transition_id": tid, "entry": 1}  # fmt: skip
        return new_event("lifecycle.stage_changed", id=tid, source="clm/stage-engine",
                         subject=customer, time=NOW, data=data)  # fmt: skip

    merged = new_event("lifecycle.customers_merged", id="m-1", source="clm/stage-engine",
                       subject="cust-1", time=NOW, data={"anonymous_id": "anon-1"})  # fmt: skip
    events = [onboarded("anon-1", "t-anon"), merged, onboarded("cust-1", "t-cust")]
    states = {"anon-1": CustomerState("anon-1", traits={"locale": "de-DE"})}
    batch = campaigns.decide(events, states, [trigger], {}, {}, NOW)  # type: ignore[arg-type]
    outcomes = [(r["customer_id"], r["status"], r["suppressed_reason"]) for r in batch.rows]
    assert outcomes == [("cust-1", "suppressed", "retracted"), ("cust-1", "pending", None)]
    assert batch.merged == ["anon-1"]
    assert set(states) == {"cust-1"} and states["cust-1"].traits == {"locale": "de-DE"}
