"""The RFM quintiles, tie rule and segment map, on their own."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from clm_events import rfm
from clm_events.catalog import RFM_SEGMENTS


def test_the_segment_map_names_every_cell_with_the_catalog_segments() -> None:
    named = {rfm.segment(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert named == set(RFM_SEGMENTS)


def test_a_value_on_a_cut_point_goes_to_the_lower_quintile() -> None:
    cuts = (1.0, 1.0, 2.0, 4.0)
    assert [rfm.quintile(v, cuts) for v in (0, 1, 1.5, 2, 3, 4, 5)] == [1, 1, 3, 3, 4, 4, 5]
    # Recency is reversed: fewer days since the last purchase, the higher R.
    c = rfm.Cuts((10, 20, 30, 40), cuts, (5, 6, 7, 8))
    assert rfm.score(c, 10, 5, 8.5).cell == "555"
    assert rfm.score(c, 41, 1, 5) == rfm.Rfm(1, 1, 1)
    assert rfm.score(c, 41, 1, 5).segment == "Lost"


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_quintiles_are_numpys_quantiles_searched_from_the_left(values: list[float]) -> None:
    cuts = rfm.cut_points(values)
    assert cuts == tuple(np.quantile(np.array(values), [0.2, 0.4, 0.6, 0.8]))
    expected = 1 + np.searchsorted(np.array(cuts), np.array(values), side="left")
    assert [rfm.quintile(v, cuts) for v in values] == list(expected)
