"""The guards between an anonymous id and a known customer, as Segment documents them:
placeholders are never linked, an anonymous id belongs to one customer, and a customer
absorbs a bounded number of anonymous ids."""

from __future__ import annotations

import pytest

from clm_ingest.domain.identity import REASONS, Facts, Guards, Outcome

FRESH = Facts(linked_to=None, has_linked_ids=False, absorbed=0)


@pytest.mark.parametrize(
    "placeholder",
    ["0", "-1", "null", "NULL", "None", "undefined", "anonymous", "Anonymous ", "", "  ",
     "00000000-0000-0000-0000-000000000000", "---", "[object Object]", "n/a"],
)  # fmt: skip
def test_placeholders_are_never_linked_on_either_side(placeholder: str) -> None:
    guards = Guards()
    assert guards.precheck(placeholder, "cust-1") is Outcome.blocked_id
    assert guards.precheck("anon-1", placeholder) is Outcome.blocked_id


@pytest.mark.parametrize("real", ["1", "10", "cust-0", "0a9f", "anonymous-7f3a", "-2"])
def test_real_ids_that_look_a_bit_like_placeholders_pass(real: str) -> None:
    assert Guards().precheck(real, "cust-1") is None


def test_configured_ids_are_blocked_too_whatever_their_case() -> None:
    guards = Guards.of(100, ["abc123", " VOID"])
    assert guards.precheck("ABC123", "cust-1") is Outcome.blocked_id
    assert guards.precheck("anon-1", "void") is Outcome.blocked_id
    assert guards.precheck("anon-1", "cust-1") is None


def test_an_id_is_not_linked_to_itself() -> None:
    assert Guards().precheck("cust-1", "cust-1") is Outcome.same_id


def test_a_fresh_anonymous_id_links_and_the_same_link_again_changes_nothing() -> None:
    guards = Guards()
    assert guards.decide("cust-1", FRESH) is Outcome.linked
    again = Facts(linked_to="cust-1", has_linked_ids=False, absorbed=1)
    assert guards.decide("cust-1", again) is Outcome.unchanged
    assert not Outcome.linked.refused and not Outcome.unchanged.refused


def test_an_anonymous_id_links_to_at_most_one_customer() -> None:
    taken = Facts(linked_to="cust-1", has_linked_ids=False, absorbed=0)
    assert Guards().decide("cust-2", taken) is Outcome.already_linked


def test_a_customer_absorbs_at_most_the_configured_number_of_anonymous_ids() -> None:
    guards = Guards(max_anonymous_ids=2)
    assert guards.decide("cust-1", Facts(None, False, absorbed=1)) is Outcome.linked
    assert guards.decide("cust-1", Facts(None, False, absorbed=2)) is Outcome.customer_limit


def test_a_customer_others_are_linked_to_is_not_merged_into_another() -> None:
    assert Guards().decide("cust-2", Facts(None, True, 0)) is Outcome.has_linked_ids


def test_every_refusal_has_a_reason_for_people() -> None:
    assert {o for o in Outcome if o.refused} == set(REASONS)
