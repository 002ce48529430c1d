"""Score event ids: stable per (customer, count), so consumers dedupe replays, and free of
the customer id, so no consumer's processed-events table names the person."""

from clm_scoring.jobs import score_event_id


def test_a_score_event_id_is_stable_distinct_and_names_no_customer() -> None:
    first = score_event_id("cust-42", 1)
    assert first == score_event_id("cust-42", 1)
    assert first.startswith("score-") and len(first) == len("score-") + 32
    assert "cust-42" not in first
    # ("cust-4", 21) is not ("cust-42", 1): the two parts are kept apart.
    others = {score_event_id("cust-42", 2), score_event_id("cust-4", 21), score_event_id("x", 1)}
    assert first not in others and len(others) == 3
