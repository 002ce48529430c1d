"""Journey rules without I/O: what a definition may say, sticky splits, waits in the
customer's time zone, the global cap across channels, and how a run moves."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from clm_campaigns.domain.journeys import (
    JourneyDefinition,
    SplitStep,
    WaitStep,
    arm_of,
    compile_journey,
    wait_until,
)
from clm_campaigns.domain.policy import GlobalCap, PastContact, decide
from clm_campaigns.domain.projection import CustomerState, Occasion
from clm_campaigns.domain.stats import Group, two_proportions
from clm_campaigns.domain.triggers import TriggerDefinition
from clm_campaigns.journeys import Pass, advance, on_events, start
from clm_campaigns.repository import Run
from clm_events.envelope import EVENT_ADAPTER, Event

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOOK = {"channel": "webhook", "url": "https://x.example/h", "payload": "{}"}


def journey(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "j",
        "entry": {"on": {"kind": "transition", "to_stage": "onboarding"}},
        "steps": list(steps),
        **extra,
    }


def refusal(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        JourneyDefinition.model_validate(body)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_steps_may_only_jump_forward_to_steps_that_exist() -> None:
    send = {"id": "hello", "type": "send", "action": HOOK}
    back = journey(send, {"id": "again", "type": "branch", "condition": "true", "then": "hello"})
    ((_, why),) = refusal(back)
    assert "steps[1].then" in why and "not after" in why
    ((_, why),) = refusal(journey({**send, "next": "nowhere"}))
    assert "steps[0].next: no step 'nowhere'" in why
    ((_, why),) = refusal(journey(send, send))
    assert "steps[1].id: 'hello' is used twice" in why


def test_a_definition_names_the_field_of_each_mistake() -> None:
    fields = [where for where, _ in refusal(journey({"id": "w", "type": "wait"}))]
    assert fields == ["steps.0.wait"]
    arms = [{"name": "a", "percent": 60}, {"name": "b", "percent": 30}]
    ((where, why),) = refusal(journey({"id": "ab", "type": "split", "arms": arms}))
    assert where == "steps.0.split" and "add up to 100" in why
    bad = journey({"id": "b", "type": "branch", "condition": "stage > 3"})
    ((where, _),) = refusal(bad)
    assert where == "steps.0.branch.condition"
    ((where, _),) = refusal(journey({"id": "Bad Id", "type": "exit"}))
    assert where == "steps.0.exit.id"


def test_a_split_assigns_an_arm_by_hash_sticky_and_in_proportion() -> None:
    split = SplitStep.model_validate(
        {
            "id": "ab",
            "type": "split",
            "arms": [
                {"name": "a", "percent": 45},
                {"name": "b", "percent": 45},
                {"name": "holdout", "percent": 10, "holdout": True},
            ],
        }
    )
    n = 10_000
    arms = [arm_of("jrn_1", f"c{i}", split).name for i in range(n)]
    assert arms == [arm_of("jrn_1", f"c{i}", split).name for i in range(n)]  # re-entry
    for name, share in (("a", 0.45), ("b", 0.45), ("holdout", 0.10)):
        sigma = (n * share * (1 - share)) ** 0.5
        assert abs(arms.count(name) - n * share) < 4 * sigma, (name, arms.count(name))
    other = [arm_of("jrn_2", f"c{i}", split).name for i in range(n)]
    assert sum(a != b for a, b in zip(arms, other, strict=True)) > n // 3  # per journey


def test_a_wait_until_a_time_of_day_uses_the_customers_zone() -> None:
    step = WaitStep.model_validate({"id": "w", "type": "wait", "until": "09:00"})
    berlin = ZoneInfo("Europe/Berlin")
    evening = datetime(2026, 11, 20, 20, 0, tzinfo=berlin).astimezone(UTC)
    assert wait_until(step, evening, "Europe/Berlin", "UTC") == datetime(
        2026, 11, 21, 9, 0, tzinfo=berlin
    )
    early = datetime(2026, 11, 20, 7, 0, tzinfo=berlin).astimezone(UTC)
    assert wait_until(step, early, "Europe/Berlin", "UTC") == datetime(
        2026, 11, 20, 9, 0, tzinfo=berlin
    )
    assert wait_until(step, early, None, "UTC") == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    step = WaitStep.model_validate({"id": "w", "type": "wait", "seconds": 3600})
    assert wait_until(step, NOW, None, "UTC") == NOW + timedelta(hours=1)


def _trigger(channel: str = "email", **extra: Any) -> TriggerDefinition:
    action = {"channel": "email", "subject": "s", "body": "b"} if channel == "email" else HOOK
    return TriggerDefinition.model_validate(
        {"name": "t", "on": {"kind": "transition", "to_stage": "at_risk"}, "action": action,
         **extra}
    )  # fmt: skip


def test_the_global_cap_counts_one_channels_marketing_and_never_stops_a_transactional() -> None:
    week = timedelta(days=7)
    cap = GlobalCap(5, timedelta(days=1), {"email": (3, week)})
    three = [PastContact(f"t{i}", NOW - timedelta(days=i + 1), "email") for i in range(3)]

    def status(definition: TriggerDefinition, contacts: list[PastContact]) -> str | None:
        d = decide(
            trigger_id="t9",
            definition=definition,
            customer_id="c",
            contacts=contacts,
            now=NOW,
            timezone=None,
            global_cap=cap,
        )
        return d.suppressed_reason or d.status

    assert status(_trigger(), three) == "global_cap"  # the fourth email of the week
    assert status(_trigger(transactional=True), three) == "pending"
    receipts = [PastContact(c.trigger_id, c.at, "email", True) for c in three]
    assert status(_trigger(), receipts) == "pending"  # receipts do not count
    assert status(_trigger("webhook"), three) == "pending"  # another channel's cap
    old = [PastContact("t", NOW - timedelta(days=8), "email")] * 3
    assert status(_trigger(), old) == "pending"


def _run(journey_id: str, step: str, status: str = "active", **extra: Any) -> Run:
    fields: dict[str, Any] = {
        "id": "run_1",
        "journey_id": journey_id,
        "journey_version": 1,
        "customer_id": "c1",
        "entry_key": "onboarding#1",
        "status": status,
        "step_id": step,
        "due_at": NOW,
        "step_at": NOW,
        "seen": {},
        "arm": None,
        "cause_event": "clm/stage-engine/t1",
        "cause_time": NOW,
        "occasion": None,
        "entered_at": NOW,
        "finished_at": None,
        "exit_reason": None,
    }
    return Run(**{**fields, **extra})


def _sent(trigger: Any, state: Any, occasion: Any, run: Any, now: Any) -> dict[str, Any]:
    return {"id": f"act_{trigger.id}", "status": "pending", "suppressed_reason": None}


def test_a_run_moves_until_it_waits_and_checks_the_exit_before_each_step() -> None:
    body = journey(
        {"id": "hello", "type": "send", "action": HOOK},
        {"id": "nap", "type": "wait", "seconds": 60},
        {"id": "check", "type": "branch", "condition": 'stage == "active"', "else": "nudge"},
        {"id": "done", "type": "exit"},
        {"id": "nudge", "type": "send", "action": HOOK},
        exit={"condition": 'stage == "lapsed"'},
    )
    j = compile_journey("jrn_x", 1, JourneyDefinition.model_validate(body))
    state = CustomerState("c1", stage="onboarding")
    run, out = _run("jrn_x", "hello"), Pass()
    advance(run, j, state, NOW, out, _sent, "UTC")
    assert (run.status, run.step_id, run.due_at) == ("waiting", "nap", NOW + timedelta(seconds=60))
    assert [s["outcome"] for s in out.steps] == ["sent"]
    assert [a["id"] for a in out.actions] == ["act_jrn_x/hello"]

    later = NOW + timedelta(seconds=90)  # due 30 s ago: it says how late
    advance(run, j, state, later, out, _sent, "UTC")
    assert [(s["step_id"], s["outcome"]) for s in out.steps[1:]] == [
        ("nap", "waited"),
        ("check", "else"),
        ("nudge", "sent"),
    ]
    assert out.steps[1]["late_seconds"] == 30 and out.steps[2]["late_seconds"] == 0
    assert (run.status, run.finished_at) == ("completed", later)

    lapsed, run, out = CustomerState("c1", stage="lapsed"), _run("jrn_x", "hello"), Pass()
    advance(run, j, lapsed, NOW, out, _sent, "UTC")
    assert (run.status, run.exit_reason, out.steps) == ("exited", "exit_condition", [])


def _event(customer: str, type_: str, at: datetime) -> Event:
    return EVENT_ADAPTER.validate_python(
        {"specversion": "1.0", "id": f"e-{at.timestamp()}", "source": "test", "type": type_,
         "subject": customer, "time": at.isoformat(),
         "data": {"invoice_id": "i1", "amount": "10.00", "currency": "EUR"}}
    )  # fmt: skip


def test_a_wait_for_decides_by_event_time_whatever_order_things_arrive_in() -> None:
    body = journey(
        {"id": "later", "type": "wait", "seconds": 600},
        {"id": "paid", "type": "wait_for", "event": "billing.invoice_paid",
         "timeout_seconds": 3600, "on_timeout": "remind"},
        {"id": "thanks", "type": "send", "action": HOOK, "next": "end"},
        {"id": "remind", "type": "send", "action": HOOK},
        {"id": "end", "type": "exit"},
    )  # fmt: skip
    j = compile_journey("jrn_w", 1, JourneyDefinition.model_validate(body))
    versions = {("jrn_w", 1): (j, True)}
    state = CustomerState("c1")
    step_starts = NOW + timedelta(minutes=10)  # when the wait ends, in event time
    cases = {
        # paid within the hour after the wait, consumed while the run still waited on it
        "during": ([], [step_starts + timedelta(minutes=5)], "thanks"),
        # the same payment consumed before the run reached the step
        "early": ([step_starts + timedelta(minutes=5)], [], "thanks"),
        # paid before the wait ended: not what the step waits for
        "before": ([NOW + timedelta(minutes=1)], [], "remind"),
        "never": ([], [], "remind"),
    }
    for name, (first, second, expected) in cases.items():
        run, out = _run("jrn_w", "later"), Pass()
        advance(run, j, state, NOW, out, _sent, "UTC")  # waiting 10 minutes
        on_events([run], versions, [_event("c1", "billing.invoice_paid", t) for t in first], NOW)
        late = NOW + timedelta(minutes=30)  # the pass runs 20 minutes late
        advance(run, j, state, late, out, _sent, "UTC")
        if run.status == "waiting":
            assert run.due_at == step_starts + timedelta(hours=1), name
            events = [_event("c1", "billing.invoice_paid", t) for t in second]
            on_events([run], versions, events, late)
            advance(run, j, state, max(late, run.due_at), out, _sent, "UTC")
        assert [s["step_id"] for s in out.steps] == ["later", "paid", expected, "end"], name


def test_two_arms_compare_with_a_two_proportion_test() -> None:
    out = two_proportions(Group(1000, 120), Group(1000, 80))
    assert out["difference"] == pytest.approx(0.04)
    # z = 0.04 / sqrt(0.1 * 0.9 * 2 / 1000) = 2.98: p = 0.0029 (a normal table)
    assert out["p_value"] == pytest.approx(0.0029, abs=0.0002)
    assert out["ci95_low"] < 0.04 < out["ci95_high"]
    assert two_proportions(Group(0, 0), Group(10, 1))["p_value"] is None


def test_time_of_day_wait_parses_and_refuses_both_kinds() -> None:
    ((_, why),) = refusal(
        journey({"id": "w", "type": "wait", "seconds": 60, "until": time(9).isoformat()})
    )
    assert "exactly one of seconds and until" in why


def test_a_replayed_entry_starts_no_second_run_and_a_backfill_or_old_event_none() -> None:
    j = compile_journey(
        "jrn_r", 1, JourneyDefinition.model_validate(journey({"id": "x", "type": "exit"}))
    )
    state = CustomerState("c1", stage="onboarding")

    def entering(**extra: Any) -> Occasion:
        fields: dict[str, Any] = {
            "event_id": "tr-1",
            "event_source": "clm/stage-engine",
            "event_type": "lifecycle.stage_changed",
            "time": NOW,
            "data": {},
            "to_stage": "onboarding",
            "transition_id": "t1",
            "entry": 1,
        }
        return Occasion(**{**fields, **extra})

    # The same stay, consumed twice (a replay, or a transition a late event re-created
    # under another id): one run.
    again = entering(transition_id="t1-rewritten")
    out = start([j], [(state, entering()), (state, again)], {}, NOW)
    assert [r["entry_key"] for r in out.runs] == ["onboarding#1"]
    assert [d["reason"] for d in out.decisions] == ["duplicate_entry"]
    out = start([j], [(state, entering(backfill=True, send_actions=False))], {}, NOW)
    assert (out.runs, [d["reason"] for d in out.decisions]) == ([], ["backfill"])
    out = start([j], [(state, entering())], {}, NOW + timedelta(days=2))
    assert (out.runs, [d["reason"] for d in out.decisions]) == ([], ["stale"])
