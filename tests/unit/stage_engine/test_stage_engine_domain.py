"""The pure lifecycle logic: facts, the default model's stages, time moves, order independence."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clm_events.facts import FACTS
from clm_events.rfm import RFM_FACTS
from clm_events.scoremodel import ServedModel, Summary
from clm_stage_engine.domain.facts import Accumulator, facts_at
from clm_stage_engine.domain.inputs import Input, from_event, to_us
from clm_stage_engine.domain.model import (
    DEFAULT_MODEL,
    CompiledModel,
    ModelError,
    ModelSpec,
    Rule,
    compile_model,
)
from clm_stage_engine.domain.timeline import Timeline, advance, reevaluate

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
DAY = 86_400_000_000
MODEL = compile_model(DEFAULT_MODEL, 1)
# A served score model (weekly BG/NBD and Gamma-Gamma): rules reading scores evaluate
# under it. Parameters of a plausible retail base, not fitted to anything here.
SERVED = ServedModel(
    version=1,
    model="bgnbd",
    time_unit="week",
    purchase_params={"r": 0.8, "alpha": 6.0, "a": 0.9, "b": 3.0},
    spend_params={"p": 6.0, "q": 4.0, "gamma": 15.0},
    typical_gap=12.0,
    horizon_months=12,
    monthly_discount_rate=0.01,
    clv_top_decile=60.0,
)
SCORED = compile_model(DEFAULT_MODEL, 2, SERVED)


def at(days: float) -> int:
    return to_us(T0 + timedelta(days=days))


def inp(days: float, kind: str, id: str, **data: Any) -> Input:
    return Input(at(days), "shop", id, kind, data)


def buy(days: float, id: str, amount: float = 20.0) -> Input:
    return inp(days, "purchase.completed", id, amount=amount, order=id)


def stages(tl: Timeline) -> list[tuple[str | None, str, str]]:
    return [(t.from_stage, t.to_stage, t.cause) for t in tl.history]


def run(inputs: list[Input], until_days: float, model: CompiledModel | None = None) -> Timeline:
    tl = Timeline("c-1")
    advance(tl, model or MODEL, inputs, at(until_days))
    return tl


def facts_acc(inputs: list[Input], until_days: float) -> Accumulator:
    return run(inputs, until_days).fold()


def test_a_shopper_goes_through_every_forward_stage_and_time_moves_them_back() -> None:
    journey = [
        inp(0, "web.signed_up", "signup", traits={"email": "ada@example.com"}),
        buy(3, "o1"),
        buy(20, "o2"),
        buy(40, "o3"),
        buy(60, "o4"),
        inp(61, "support.nps_submitted", "nps", score=10),
    ]
    tl = run(journey, until_days=400)
    assert stages(tl) == [
        (None, "prospect", "event"),
        ("prospect", "onboarding", "event"),
        ("onboarding", "active", "event"),  # second purchase, inside the first 30 days
        ("active", "loyal", "event"),  # fourth purchase in a year
        ("loyal", "advocate", "event"),  # NPS 10
        ("advocate", "at_risk", "time"),  # twice the usual 19-day gap passed
        ("at_risk", "lapsed", "time"),  # 180 days without a purchase
    ]
    # Backward moves happen on the UTC-midnight timer grid, at the first tick past the limit.
    lapsed = tl.history[-1]
    assert lapsed.at == to_us(datetime(2025, 8, 30, tzinfo=UTC))  # day 60 + 180, 10:00
    assert lapsed.facts is not None and lapsed.facts["days_since_last_purchase"] > 180


def test_a_lapsed_customer_who_buys_is_won_back_and_active_after_the_next_purchase() -> None:
    tl = run([buy(0, "o1"), buy(30, "o2"), buy(400, "o3")], until_days=400)
    assert [s[1] for s in stages(tl)][-2:] == ["lapsed", "won_back"]
    advance(tl, MODEL, [buy(420, "o4")])
    assert tl.stage == "active"


def test_failed_payment_puts_a_customer_at_risk_until_the_invoice_is_paid() -> None:
    tl = run(
        [
            buy(0, "o1"),
            buy(10, "o2"),
            inp(12, "billing.payment_failed", "f1", invoice="inv-1"),
        ],
        until_days=12,
    )
    assert tl.stage == "at_risk"
    advance(tl, MODEL, [inp(13, "billing.invoice_paid", "p1", invoice="inv-1", amount=9.0)])
    assert tl.stage == "active"


def test_a_cancelled_subscription_lapses_the_customer() -> None:
    tl = run(
        [
            inp(0, "billing.subscription_started", "s1", subscription="sub-1"),
            inp(5, "billing.subscription_cancelled", "s2", subscription="sub-1"),
        ],
        until_days=5,
    )
    assert [s[1] for s in stages(tl)] == ["onboarding", "lapsed"]


def test_rules_read_scores_as_of_each_moment_under_the_served_model() -> None:
    """A weekly buyer who stops: the churn probability grows with every silent day, and
    the timer moves them to at_risk on the first day it reaches 0.5, with the deciding
    scores of that day; nothing but their own events and the served model decides it."""
    spec = ModelSpec(
        stages=("onboarding", "active", "at_risk"),
        rules=(
            Rule("churn", "at_risk", "churn_probability != null && churn_probability >= 0.5"),
            Rule("active", "active", "purchases_total >= 2"),
            Rule("new", "onboarding", "true"),
        ),
    )
    model = compile_model(spec, 1, SERVED)
    orders = [buy(7 * w, f"o{w}") for w in range(4)]
    tl = run(orders, 200, model)
    assert stages(tl) == [
        (None, "onboarding", "event"),
        ("onboarding", "active", "event"),
        ("active", "at_risk", "time"),
    ]
    risk = tl.history[-1]
    assert (risk.to_stage, risk.cause) == ("at_risk", "time") and risk.facts is not None
    assert risk.facts["churn_probability"] >= 0.5 and risk.facts["purchases_total"] == 4
    # The day before, the same customer scored under 0.5: time alone moved them.
    acc = tl.fold()
    assert acc.score_fact("churn_probability", risk.at - DAY, SERVED) < 0.5
    # Without a served model no score exists, and no rule reading one fires.
    plain = Timeline("c-1")
    advance(plain, compile_model(spec, 1), orders, at(200))
    assert [t.to_stage for t in plain.history] == ["onboarding", "active"]


def test_scores_follow_refunds_and_count_days_as_scoring_does() -> None:
    acc = facts_acc([buy(0, "a", 30.0), buy(0.2, "b", 10.0), buy(14, "c", 50.0)], 14)
    summary = acc.score_summary(at(21))
    assert summary is not None
    # Two orders on the first day are one purchase day; the repeat is day 14.
    assert (summary.x, summary.t_x_days, summary.T_days) == (1, 14, 21)
    assert summary.mean_repeat_spend == 50.0 and summary.mean_spend == 45.0
    # A full refund removes its order; a refund before its purchase still applies.
    refund = inp(15, "purchase.refunded", "r1", amount=50.0, order="c")
    acc = facts_acc([buy(0, "a", 30.0), buy(14, "c", 50.0), refund], 15)
    assert acc.score_summary(at(21)) == Summary(0, 0, 21, 0.0, 30.0)
    assert acc.score_fact("clv", at(21), SERVED) == round(
        SERVED.score(Summary(0, 0, 21, 0.0, 30.0)).clv, 2
    )
    assert acc.score_fact("clv_top_decile", at(21), SERVED) == SERVED.clv_top_decile


def test_facts_follow_event_time_windows_refunds_and_open_items() -> None:
    inputs = sorted(
        [
            buy(0, "o1", 100.0),
            buy(200, "o2", 50.0),
            buy(230, "o3", 30.0),
            inp(231, "purchase.refunded", "r1", amount=10.0),
            inp(232, "support.ticket_resolved", "t2", ticket="T2"),  # before its opening
            inp(233, "support.ticket_opened", "t2o", ticket="T2", priority="urgent"),
            inp(233, "support.ticket_opened", "t1", ticket="T1", priority="high"),
            inp(234, "web.identified", "w1", traits={"timezone": "Europe/Berlin", "name": "Ada"}),
            inp(235, "web.identified", "w2", traits={"name": "Ada L."}),
        ],
        key=lambda i: i.order,
    )
    f = facts_at(inputs, at(240))
    assert set(f) == set(FACTS) | set(RFM_FACTS)  # RFM: the stage engine's own facts
    assert (f["purchases_30d"], f["purchases_90d"], f["purchases_total"]) == (1, 2, 3)
    assert (f["revenue_30d"], f["revenue_total"]) == (20.0, 170.0)
    assert f["refunds_total"] == 1
    assert f["avg_days_between_purchases"] == 115.0
    assert f["days_since_last_purchase"] == 10.0
    assert (f["open_tickets"], f["open_ticket_max_priority"]) == (1, "high")
    assert (f["name"], f["timezone"], f["email"]) == ("Ada L.", "Europe/Berlin", None)
    assert f["subscription_status"] == "none" and f["latest_nps"] is None


def test_late_event_rewrites_the_history_from_its_time() -> None:
    tl = run([buy(0, "o1"), buy(30, "o2")], until_days=250)
    assert tl.stage == "lapsed"
    # A purchase we only hear about now, made on day 100, changes what happened after it.
    out = advance(tl, MODEL, [buy(100, "late")])
    assert [t.to_stage for t in out.dropped] == ["lapsed"]  # at_risk on day 90 stays
    assert tl.history == run([buy(0, "o1"), buy(30, "o2"), buy(100, "late")], 250).history
    assert tl.stage == "at_risk"


def test_model_change_reevaluation_is_a_model_change_transition() -> None:
    tl = run([buy(0, "o1"), buy(5, "o2")], until_days=6)
    assert tl.stage == "active"
    spec = ModelSpec(DEFAULT_MODEL.stages, (Rule("all_loyal", "loyal", "purchases_total >= 2"),))
    out = reevaluate(tl, compile_model(spec, 2), at(7))
    assert [(t.from_stage, t.to_stage, t.cause, t.model_version) for t in out.added] == [
        ("active", "loyal", "model_change", 2)
    ]


def test_due_time_is_the_next_tick_only_for_customers_time_can_move() -> None:
    prospect = run([inp(0, "web.page_viewed", "v1")], until_days=0)
    assert prospect.due_at is None
    buyer = run([buy(0, "o1")], until_days=0)
    assert buyer.due_at == to_us(datetime(2025, 1, 2, tzinfo=UTC))


def test_the_timer_looks_ahead_to_the_first_tick_that_can_move_the_customer() -> None:
    tl = run([buy(0, "o1")], until_days=0)
    advance(tl, MODEL, [], at(1), look_ahead=400)
    assert tl.stage == "onboarding"
    # Onboarding ends when 30 days as a customer have passed: the first tick after
    # day 30 at 10:00 is the UTC midnight that starts day 31.
    assert tl.due_at == to_us(datetime(2025, 2, 1, tzinfo=UTC))
    # A shorter look-ahead finds nothing and asks to be checked again where it stopped
    # (4-7 ticks: the window is shortened by up to half, per customer).
    short = run([buy(0, "o1")], until_days=0)
    advance(short, MODEL, [], at(1), look_ahead=7)
    assert short.due_at is not None
    assert to_us(datetime(2025, 1, 7, tzinfo=UTC)) <= short.due_at
    assert short.due_at <= to_us(datetime(2025, 1, 10, tzinfo=UTC))
    # Woken at each due time (a second late), it skips the probed days and probes further
    # each time, until it reaches the day onboarding ends.
    dues = []
    while short.due_at < tl.due_at:
        advance(short, MODEL, [], short.due_at + 1_000_000, look_ahead=30, quiet_until=short.due_at)
        assert short.due_at is not None
        dues.append(short.due_at)
    # Each window is at least the span of the last: far fewer wake-ups than 29 midnights.
    assert dues[-1] == tl.due_at and len(dues) <= 7
    assert stages(short) == [(None, "onboarding", "event")]


def test_a_repeat_of_a_stored_event_leaves_the_due_time_the_timer_found() -> None:
    tl = run([buy(0, "o1")], until_days=0)
    advance(tl, MODEL, [], at(1), look_ahead=400)
    found = tl.due_at
    out = advance(tl, MODEL, [buy(0, "o1")])  # redelivered
    assert not out.touched and not out.fresh and tl.due_at == found
    # A new event still resets it to the next midnight.
    advance(tl, MODEL, [buy(2, "o2")])
    assert tl.due_at == to_us(datetime(2025, 1, 4, tzinfo=UTC))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule("r", "active", "purchase_count > 1"), "unknown fact 'purchase_count'"),
        (Rule("r", "vip", "true"), "unknown stage 'vip'"),
        (Rule("r", "active", 'stage == "gold"'), "unknown stage 'gold'"),
        (Rule("r", "active", "purchases_total >"), "does not compile"),
        (Rule("r", "active", "purchases_total + 1"), "must be a boolean expression"),
        (Rule("r", "active", "clv > 10.0"), "fails to evaluate when every optional fact is null"),
    ],
)
def test_invalid_models_are_rejected_naming_the_problem(rule: Rule, message: str) -> None:
    with pytest.raises(ModelError) as err:
        compile_model(ModelSpec(("prospect", "active"), (rule,)), 2)
    assert any(message in reason for _, reason in err.value.errors), err.value.errors
    assert all(path.startswith("rules[0]") for path, _ in err.value.errors)


def test_events_become_compact_inputs() -> None:
    from clm_events.envelope import parse_event

    event = parse_event(
        {
            "specversion": "1.0",
            "id": "ord-1",
            "source": "shop",
            "type": "purchase.completed",
            "subject": "c-1",
            "time": "2026-01-01T00:00:00Z",
            "data": {"order_id": "1", "amount": "59.90", "currency": "EUR"},
        }
    )
    i = from_event(event)
    assert i is not None and i.data == {"amount": 59.9, "order": "1"}
    assert i.key == ("shop", "ord-1")


# -- order independence ----------------------------------------------------------------

# Rules read scores (SCORED): the history must stay a function of the events with them.
_KINDS = [
    ("purchase.completed", {"amount": 25.0, "order": "o1"}),
    ("purchase.completed", {"amount": 40.0, "order": "o2"}),
    ("purchase.completed", {"amount": 15.0}),  # no order id: an earlier release's input
    ("purchase.refunded", {"amount": 5.0, "order": "o1"}),
    ("purchase.refunded", {"amount": 40.0, "order": "o2"}),
    ("billing.payment_failed", {"invoice": "inv-1"}),
    ("billing.invoice_paid", {"invoice": "inv-1", "amount": 9.0}),
    ("billing.subscription_started", {"subscription": "s"}),
    ("billing.subscription_cancelled", {"subscription": "s"}),
    ("support.ticket_opened", {"ticket": "t", "priority": "high"}),
    ("support.ticket_resolved", {"ticket": "t"}),
    ("support.nps_submitted", {"score": 9}),
    ("web.page_viewed", {}),
    ("web.identified", {"traits": {"email": "x@example.com"}}),
]

_event = st.builds(
    lambda n, day, kind: Input(at(day), "shop", f"e{n}", _KINDS[kind][0], dict(_KINDS[kind][1])),
    st.integers(0, 10_000),
    st.floats(0, 400, allow_nan=False).map(lambda d: round(d, 3)),
    st.integers(0, len(_KINDS) - 1),
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=25, unique_by=lambda i: i.id),
    data=st.data(),
)
def test_arrival_order_duplicates_and_batching_change_nothing(
    events: list[Input], data: st.DataObject
) -> None:
    clock = at(450)
    events_ = sorted(events, key=lambda i: i.order)
    reference = Timeline("c-1")
    advance(reference, SCORED, events_, clock)

    # The same events, shuffled, some twice, in arbitrary batches, with timer sweeps between,
    # stored and loaded between batches as the service does: the inputs in a table of their
    # own, read back only when a step needs them, the fold sometimes missing (a timeline
    # stored before folds were kept).
    arrivals = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    tl, table = Timeline("c-1"), list[Input]()

    def step(batch: list[Input], clock: int | None = None) -> None:
        if tl.needs_inputs(batch):
            tl.load_inputs([i.to_json() for i in reversed(table)])
        table.extend(advance(tl, SCORED, batch, clock).fresh)

    pos = 0
    while pos < len(arrivals):
        size = data.draw(st.integers(1, 4))
        step(arrivals[pos : pos + size])
        pos += size
        if data.draw(st.booleans()):
            tl = _stored_and_loaded(tl, without_fold=data.draw(st.booleans()))
        if data.draw(st.booleans()):  # the timer runs up to some later moment
            step([], max(i.at for i in arrivals[:pos]) + data.draw(st.integers(0, 9)) * DAY)
    step([], clock)

    assert [t.compact() for t in tl.history] == [t.compact() for t in reference.history]
    assert [t.facts for t in tl.history] == [t.facts for t in reference.history]
    assert tl.stage == reference.stage
    assert sorted(i.order for i in table) == sorted(i.order for i in events)  # each once
    assert facts_at(sorted(table, key=lambda i: i.order), clock) == facts_at(events_, clock)
    assert tl.fold().facts(clock) == facts_at(events_, clock)  # the stored fold


def _stored_and_loaded(tl: Timeline, *, without_fold: bool) -> Timeline:
    stored = json.loads(json.dumps(tl.to_json()))
    if without_fold:
        del stored["f"]
    loaded = Timeline.from_json("c-1", stored, tl.evaluated_until)
    # The facts that decided each transition live in the history table, not here.
    pairs = zip(loaded.history, tl.history, strict=True)
    loaded.history = [replace(t, facts=o.facts) for t, o in pairs]
    return loaded


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=12, unique_by=lambda i: i.id),
    look_ahead=st.integers(1, 60),
)
def test_a_timer_that_wakes_only_at_due_times_builds_the_daily_history(
    events: list[Input], look_ahead: int
) -> None:
    """Events arrive live; one timer ticks every day, the other sleeps until each
    customer's due time and skips the ticks its look-ahead already probed."""
    events = sorted(events, key=lambda i: i.order)
    daily, lazy = Timeline("c-1"), Timeline("c-1")
    woken = 0
    for day in range(1, 451):
        now = at(day)
        arriving = [i for i in events if at(day - 1) < i.at <= now]
        advance(daily, SCORED, arriving, now)
        if arriving:
            advance(lazy, SCORED, arriving, now)  # the event path: due is the next tick
        elif lazy.due_at is not None and lazy.due_at <= now:
            # The service hands back the stored due time (same model, same inputs).
            advance(lazy, SCORED, [], now, look_ahead=look_ahead, quiet_until=lazy.due_at)
            woken += 1
    assert [t.compact() for t in lazy.history] == [t.compact() for t in daily.history]
    assert [t.facts for t in lazy.history] == [t.facts for t in daily.history]
    # After each event or transition the probes double (1, 2, 4, ... look_ahead ticks):
    # a customer is woken a few times per change, then once per look-ahead span.
    doublings = look_ahead.bit_length() + 2
    assert woken <= (len(events) + len(daily.history) + 1) * doublings + 900 // look_ahead


def test_segment_activity_of_any_name_counts_as_web_activity_and_links_change_no_fact() -> None:
    from clm_events.envelope import parse_event

    def event(kind: str, data: dict[str, Any]) -> Input:
        e = parse_event(
            {
                "specversion": "1.0",
                "id": f"e-{kind}",
                "source": "segment",
                "type": kind,
                "subject": "c-1",
                "time": "2026-01-01T10:00:00Z",
                "data": data,
            }
        )
        i = from_event(e)
        assert i is not None, kind
        return i

    tracked = event("web.tracked", {"name": "Product Viewed", "properties": {"sku": "s1"}})
    screen = event("web.screen_viewed", {"name": "Home"})
    link = event("identity.linked", {"anonymous_id": "anon-1"})
    assert (tracked.data, screen.data, link.data) == (
        {"name": "Product Viewed"},
        {},
        {"anonymous_id": "anon-1"},
    )
    tl = Timeline("c-1")
    advance(tl, MODEL, [link])
    assert tl.fold().facts(link.at)["last_web_activity_at"] is None
    advance(tl, MODEL, [tracked, screen])
    assert tl.stage == "prospect"
    assert tl.fold().facts(tracked.at)["last_web_activity_at"] == datetime(
        2026, 1, 1, 10, tzinfo=UTC
    )


def test_named_events_are_counted_per_window_and_rules_can_move_customers_on_them() -> None:
    viewed = [inp(d, "web.tracked", f"v{d}", name="Product Viewed") for d in (1, 70, 80, 95)]
    inputs = sorted(
        [*viewed, inp(96, "web.tracked", "c1", name="Cart Viewed")], key=lambda i: i.order
    )
    f = facts_at(inputs, at(100))
    assert f["tracked_30d"] == {"Product Viewed": 2, "Cart Viewed": 1}
    assert f["tracked_90d"] == {"Product Viewed": 3, "Cart Viewed": 1}
    assert f["tracked_total"] == {"Product Viewed": 4, "Cart Viewed": 1}
    assert facts_at(inputs, at(200))["tracked_30d"] == {}  # counts leave the window with time
    assert facts_at([], at(0))["tracked_365d"] == {}

    engaged = '"Product Viewed" in tracked_30d && tracked_30d["Product Viewed"] >= 2'
    model = compile_model(
        ModelSpec(("prospect", "active"), (Rule("engaged", "active", engaged),)), 2
    )
    tl = Timeline("c-1")
    advance(tl, model, inputs[:1], at(1))
    assert tl.stage is None  # one view: no rule holds
    advance(tl, model, inputs[1:3], at(81))
    assert tl.stage == "active"

    # Read without a guard, a name the customer never sent would fail every evaluation.
    with pytest.raises(ModelError) as err:
        unguarded = Rule("r", "active", 'tracked_30d["Product Viewed"] >= 2')
        compile_model(ModelSpec(("prospect", "active"), (unguarded,)), 2)
    assert "'Product Viewed' in tracked_" in err.value.errors[0][1], err.value.errors


def test_a_customer_counts_a_bounded_number_of_event_names() -> None:
    from clm_stage_engine.domain.facts import MAX_TRACKED_NAMES

    names = [inp(1, "web.tracked", f"e{n:04}", name=f"Viewed {n:04}") for n in range(500)]
    acc = Accumulator()
    for i in sorted(names, key=lambda i: i.order):
        acc.add(i)
    acc.add(inp(2, "web.tracked", "again", name="Viewed 0000"))
    counts = acc.facts(at(3))["tracked_total"]
    assert len(counts) == MAX_TRACKED_NAMES and counts["Viewed 0000"] == 2
    restored = Accumulator.from_json(json.loads(json.dumps(acc.to_json())))
    assert restored is not None and restored.facts(at(3)) == acc.facts(at(3))
