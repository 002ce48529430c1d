"""The served model's one-customer closed forms (used by the stage engine at every moment
it evaluates) give what scoring's vectorised scoring gives for the same summary."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clm_events.scoremodel import ServedModel, Summary
from clm_scoring.domain.bgnbd import BgNbdParams
from clm_scoring.domain.gammagamma import GammaGammaParams
from clm_scoring.domain.paretonbd import ParetoNbdParams
from clm_scoring.domain.scores import Heuristic, Model, ModelKind, Policy, score
from clm_scoring.domain.summary import TimeUnit

PURCHASE = {
    ModelKind.bgnbd: BgNbdParams(0.243, 4.414, 0.793, 2.426),
    ModelKind.pareto_nbd: ParetoNbdParams(0.55, 10.58, 0.61, 11.67),
    ModelKind.heuristic: None,
}
SPEND = GammaGammaParams(6.25, 3.74, 15.44)


@st.composite
def summaries(draw: st.DrawFn) -> Summary:
    x = draw(st.integers(0, 40))
    t_x = draw(st.integers(1, 900)) if x else 0
    return Summary(
        x=x,
        t_x_days=t_x,
        T_days=t_x + draw(st.integers(0, 900)),
        mean_repeat_spend=draw(st.floats(0.5, 2000)) if x else 0.0,
        mean_spend=draw(st.floats(0.5, 2000)),
    )


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(PURCHASE)),
    unit=st.sampled_from(list(TimeUnit)),
    spend=st.booleans(),
    s=summaries(),
)
def test_one_customer_scores_as_the_whole_base_scores_it(
    kind: ModelKind, unit: TimeUnit, spend: bool, s: Summary
) -> None:
    purchase = PURCHASE[kind]
    model = Model(
        kind,
        unit,
        purchase=purchase,
        spend=SPEND if spend else None,
        heuristic=Heuristic(typical_gap=5.0),
    )
    served = ServedModel(
        version=1,
        model=kind.value,
        time_unit=unit.value,
        purchase_params=purchase.as_dict() if purchase else None,
        spend_params=SPEND.as_dict() if spend else None,
        typical_gap=5.0,
        horizon_months=12,
        monthly_discount_rate=0.01,
        clv_top_decile=None,
    )
    whole = score(
        model,
        Policy(12, 0.01),
        x=[s.x],
        t_x=[s.t_x_days / unit.days],
        T=[s.T_days / unit.days],
        mean_repeat_spend=[s.mean_repeat_spend],
        mean_spend=[s.mean_spend],
    )
    one = served.score(s)
    assert abs(one.p_alive - whole.p_alive[0]) <= 1e-9
    assert abs(served.p_alive(s) - whole.p_alive[0]) <= 1e-9
    assert abs(one.clv - whole.clv[0]) <= 1e-9 * max(1.0, whole.clv[0])
    assert abs(one.expected_purchases - whole.expected_purchases[0]) <= 1e-9 * max(
        1.0, whole.expected_purchases[0]
    )
