"""Random customer projections and segment conditions, for the tests that hold the ways a
condition is evaluated (the CEL engine, natively, in SQL) equal."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from clm_campaigns.domain.projection import CustomerState
from clm_events.catalog import RFM_SEGMENTS, Stage

# One pool for the values customers hold and the literals conditions name, so that
# near-misses (False against 0, "5" against 5, 5.0 against 5) come up often.
POOL: list[Any] = [
    *("gold", "free", "", "5", "12.50", " 7", "1e3", "at_risk", "Champions", "é"),
    *(0, 1, 5, -3, 500, 10**17),
    *(0.0, 2.5, 5.0, 1822.5, 1e20),
    *(True, False, None),
]
# Values that look alike and that CEL tells apart (or not).
CLUSTERS: list[list[Any]] = [
    [False, 0, 0.0, "0", None, ""],
    [True, 1, 1.0, "1", "true"],
    [5, 5.0, "5", " 5", "5.0", 4.999],
    [2.5, "2.5", 2, 3, "2.50"],
    ["gold", "Gold", "gold ", "gol", "golden", "é"],
    ["at_risk", "active", "Champions", "At risk", None],
    [500, 500.5, "500", "1822.50", 1822.5, -1],
]
_scalars = st.sampled_from(POOL)
_json = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(_scalars.filter(lambda v: isinstance(v, str)), _scalars),
)


def _cel(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _maybe(keys: list[str], values: Any) -> Any:
    """A map with some of these keys (a missing key is an error in CEL)."""
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


states = st.builds(
    lambda stage, traits, facts, scores: (stage, traits, facts, scores),
    st.one_of(st.none(), st.sampled_from([s.value for s in Stage])),
    _maybe(["plan", "vip", "age", "email"], _json),
    _maybe(["purchases_total", "revenue_total", "subscription_status", "latest_nps"], _json),
    _maybe(
        ["clv", "churn_probability", "rfm_recency", "rfm_segment", "model"],
        st.one_of(_json, st.sampled_from(RFM_SEGMENTS)),
    ),
)

PATHS = [
    "stage",
    "traits.plan",
    "traits.vip",
    "traits.age",
    "facts.purchases_total",
    "facts.revenue_total",
    "facts.subscription_status",
    "facts.latest_nps",
    "facts.email",
    "facts.clv",
    "scores.clv",
    "scores.churn_probability",
    "scores.rfm_recency",
    "scores.rfm_segment",
    "scores.model",
]
_literal = st.one_of(
    st.sampled_from(POOL)
    .filter(lambda v: abs(v) <= 2**53 if isinstance(v, int | float) else True)
    .map(_cel),
    st.just("'free'"),
)
_op = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


def _atoms(paths: list[str], literal: Any) -> Any:
    """`path op literal` (either way round) or `path in [literals]`."""

    @st.composite
    def atom(draw: Any) -> str:
        path = draw(st.sampled_from(paths))
        if draw(st.integers(0, 5)) == 0:
            return f"{path} in [{', '.join(draw(st.lists(literal, max_size=3)))}]"
        left, right = path, draw(literal)
        if draw(st.booleans()):
            left, right = right, left
        return f"{left} {draw(_op)} {right}"

    return atom()


def _trees(leaves: Any, max_leaves: int) -> Any:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"{a} && {b}", inner, inner),
            st.builds(lambda a, b: f"({a} || {b})", inner, inner),
            st.builds(lambda a: f"!({a})", inner),
        ),
        max_leaves=max_leaves,
    )


conditions = _trees(
    st.one_of(_atoms(PATHS, _literal), st.sampled_from(["true", "false", "traits.vip"])), 5
)


def customer(i: int, row: Any) -> CustomerState:
    stage, traits, facts, scores = row
    return CustomerState(f"c{i:03}", stage=stage, traits=traits, facts=facts, scores=scores)


@st.composite
def cases(draw: Any) -> tuple[list[CustomerState], list[str]]:
    """Customers and conditions over a few fields and a few values only, so that every
    condition meets customers whose values it compares with (near-misses included)."""
    paths = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True))
    values = [*draw(st.sampled_from(CLUSTERS)), *draw(st.lists(st.sampled_from(POOL), max_size=2))]
    value = st.one_of(st.sampled_from(values), st.sampled_from([[values[0]], {"k": values[0]}]))
    rows = []
    for i in range(draw(st.integers(1, 8))):
        state = CustomerState(f"c{i:03}")
        for path in paths:
            if draw(st.integers(0, 4)) == 0:
                continue  # absent
            root, _, name = path.partition(".")
            v = draw(value)
            if root == "stage":
                state.stage = v if isinstance(v, str) or v is None else None
            else:
                getattr(state, root)[name] = v
        rows.append(state)
    literal = st.sampled_from([_cel(v) for v in values if not _beyond_doubles(v)] or ["0"])

    tree = _trees(st.one_of(_atoms(paths, literal), st.sampled_from(["true", "false"])), 4)
    return rows, draw(st.lists(tree, min_size=1, max_size=4))


def _beyond_doubles(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > 2**53
