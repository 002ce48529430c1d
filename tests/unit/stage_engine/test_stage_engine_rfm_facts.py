"""RFM facts in the stage engine equal what scoring computes for the same customer and cut
points: the same measures (days since the last purchase day, purchase days, spend net of
refunds) from the customer's own events, under the cuts announced with the served model."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clm_events import rfm
from clm_events.envelope import parse_event
from clm_events.scoremodel import ServedModel
from clm_scoring.domain.summary import Order, PurchaseHistory, history
from clm_scoring.jobs import rfm_of
from clm_stage_engine.domain.facts import Accumulator
from clm_stage_engine.domain.inputs import Input, from_event, to_us
from clm_stage_engine.domain.model import DEFAULT_MODEL, ModelSpec, Rule, compile_model
from clm_stage_engine.domain.timeline import Timeline, advance, reevaluate

AS_OF = date(2026, 6, 30)
NOON = to_us(datetime(2026, 6, 30, 12, tzinfo=UTC))
# Common amounts, so that cut points sit on customers' values (the tie rule matters).
AMOUNTS = ("10.00", "19.99", "20.00", "40.50", "100.00", "0.10")
SERVED = ServedModel(
    version=3,
    model="bgnbd",
    time_unit="week",
    purchase_params={"r": 0.8, "alpha": 6.0, "a": 0.9, "b": 3.0},
    spend_params=None,
    typical_gap=12.0,
    horizon_months=12,
    monthly_discount_rate=0.01,
    clv_top_decile=None,
)


def event(customer: str, id: str, type: str, day: date, **data: Any) -> Input:
    e = parse_event(
        {
            "specversion": "1.0",
            "id": id,
            "source": "shop",
            "type": type,
            "subject": customer,
            "time": f"{day.isoformat()}T{len(id) % 24:02d}:00:00Z",
            "data": {**data, "currency": "EUR"},
        }
    )
    i = from_event(e)
    assert i is not None
    return i


# One order: (days before AS_OF, amount, refunds of it: each a share of the amount).
orders_st = st.lists(
    st.tuples(
        st.integers(0, 400),
        st.sampled_from(AMOUNTS),
        st.lists(st.sampled_from((Decimal("0.1"), Decimal("0.3"), Decimal("1"))), max_size=2),
    ),
    min_size=1,
    max_size=6,
)


def both_sides(
    customer: str, orders: list[tuple[int, str, list[Decimal]]]
) -> tuple[list[Input], PurchaseHistory | None]:
    """The customer's events as the stage engine keeps them, and scoring's history of
    the same events (its orders table: a day and amount per order, refunds added up)."""
    inputs: list[Input] = []
    scored: list[Order] = []
    for n, (days_ago, amount, shares) in enumerate(orders):
        day = AS_OF - timedelta(days=days_ago)
        order = f"o{n}"
        inputs.append(
            event(customer, f"ord-{n}", "purchase.completed", day, order_id=order, amount=amount)
        )
        refunded = Decimal(0)
        for m, share in enumerate(shares):
            part = min((Decimal(amount) * share).quantize(Decimal("0.01")), Decimal(amount))
            if part <= 0:
                continue
            refunded += part
            inputs.append(
                event(
                    customer,
                    f"ref-{n}-{m}",
                    "purchase.refunded",
                    day,
                    order_id=order,
                    amount=str(part),
                )
            )
        scored.append(Order(day, Decimal(amount), refunded))
    return sorted(inputs, key=lambda i: (i.at, i.source, i.id)), history(scored)


def stage_engine_rfm(inputs: list[Input], served: ServedModel) -> dict[str, Any]:
    acc = Accumulator()
    for i in inputs:
        acc.add(i)
    return {n: acc.score_fact(n, NOON, served) for n in rfm.RFM_FACTS}


@settings(max_examples=60, deadline=None)
@given(st.lists(orders_st, min_size=1, max_size=25))
def test_rfm_facts_equal_scorings_for_the_same_histories_and_cuts(
    base: list[list[tuple[int, str, list[Decimal]]]],
) -> None:
    sides = [both_sides(f"c{n}", orders) for n, orders in enumerate(base)]
    histories = [h for _, h in sides if h is not None]
    if not histories:
        return
    # Cut points over the base, as scoring's recompute takes them from its summaries.
    cuts = rfm.cuts_of(
        [(AS_OF - h.last_day).days for h in histories],
        [h.purchase_days for h in histories],
        [float(h.first_spend + h.repeat_spend) for h in histories],
    )
    announced = replace(cuts, version=7)
    row = announced.to_json()  # an rfm_cuts row's columns
    served = replace(SERVED, rfm=announced)
    for inputs, h in sides:
        mine = stage_engine_rfm(inputs, served)
        if h is None:  # every order refunded: no purchase that counts, no RFM
            assert set(mine.values()) == {None}
            continue
        theirs = rfm_of(row, h, AS_OF)
        assert mine == {n: theirs[n] for n in rfm.RFM_FACTS}


def test_without_cut_points_or_a_purchase_the_rfm_facts_are_null() -> None:
    bought = [event("c", "ord-1", "purchase.completed", AS_OF, order_id="1", amount="20.00")]
    cuts = rfm.Cuts((1, 2, 3, 4), (1, 1, 2, 3), (10, 20, 30, 40), version=1)
    assert set(stage_engine_rfm(bought, SERVED).values()) == {None}  # no cuts announced
    assert set(stage_engine_rfm([], replace(SERVED, rfm=cuts)).values()) == {None}
    facts = stage_engine_rfm(bought, replace(SERVED, rfm=cuts))
    # 0 days: R5; 1 purchase day, on the cut point 1: F1; 20 on the cut point 20: M2.
    assert facts == {
        "rfm_recency": 5,
        "rfm_frequency": 1,
        "rfm_monetary": 2,
        "rfm_cell": "512",
        "rfm_segment": "New",
    }


def test_a_rule_reads_the_segment_as_of_each_moment_and_new_cuts_move_the_customer() -> None:
    spec = ModelSpec(
        stages=DEFAULT_MODEL.stages,
        rules=(
            Rule("champions", "loyal", 'rfm_segment == "Champions"'),
            Rule("buyers", "active", "purchases_total > 0"),
            Rule("prospect", "prospect", "true"),
        ),
    )
    # A purchase every other day: F4 from the third purchase day (above the cuts 1, 1,
    # 2), R5 while the last purchase is at most 10 days old: Champions.
    cuts = rfm.Cuts((10, 20, 30, 40), (1, 1, 2, 3), (1, 2, 3, 4), version=1)
    model = compile_model(spec, 2, replace(SERVED, rfm=cuts))
    start = AS_OF - timedelta(days=40)
    inputs = [
        event(
            "c",
            f"ord-{n}",
            "purchase.completed",
            start + timedelta(days=2 * n),
            order_id=str(n),
            amount="20.00",
        )
        for n in range(4)
    ]
    tl = Timeline("c")
    advance(tl, model, inputs, to_us(datetime.combine(AS_OF, datetime.min.time(), UTC)))
    moves = [(t.to_stage, t.facts["rfm_segment"] if t.facts else None) for t in tl.history]
    # Active on the first purchase (F1: New), loyal from the third (R5, F4: Champions),
    # back to active once more than ten days passed since the fourth (R4, F5: Loyal).
    assert moves == [("active", "New"), ("loyal", "Champions"), ("active", "Loyal")]
    assert tl.history[1].at == inputs[2].at
    assert tl.history[2].at == to_us(
        datetime.combine(start + timedelta(days=17), datetime.min.time(), UTC)
    )

    # Cut points that put 34 days since the last purchase in R5: the model sweep moves
    # the customer back to loyal, as of its time.
    wider = rfm.Cuts((40, 50, 60, 70), (1, 1, 2, 3), (1, 2, 3, 4), version=2)
    out = reevaluate(tl, compile_model(spec, 3, replace(SERVED, rfm=wider)), tl.evaluated_until)
    assert [(t.to_stage, t.cause) for t in out.added] == [("loyal", "model_change")]
    assert out.added[0].facts is not None and out.added[0].facts["rfm_cell"] == "555"
