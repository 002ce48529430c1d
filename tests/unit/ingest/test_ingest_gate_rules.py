"""The gate says per item of a request what it may publish and why not."""

from __future__ import annotations

import json
from typing import Any

from clm_events.envelope import parse_event
from clm_ingest.domain.gate import Reason, admit, parse_each, source_allowed
from clm_ingest.domain.rate_limit import RateLimiter


def purchase(i: int, source: str = "shop/checkout", **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"ord-{i}",
        "source": source,
        "type": "purchase.completed",
        "subject": f"cust-{i}",
        "time": "2026-11-20T10:15:00Z",
        "data": {"order_id": str(i), "amount": "5.00", "currency": "EUR", **data},
    }


def verdict(items: list[Any], *, batch: bool = True, limit: int = 32 * 1024) -> Any:
    return admit(
        parse_each(items, lambda item: [parse_event(item)]),
        key_source="shop",
        max_event_bytes=limit,
        batch=batch,
    )


def test_a_valid_batch_is_admitted_with_its_encoded_events() -> None:
    result = verdict([purchase(1), purchase(2)])
    assert result.status == 202
    assert [a.event.id for a in result.admitted] == ["ord-1", "ord-2"]
    assert parse_event(json.loads(result.admitted[0].value)).id == "ord-1"


def test_one_invalid_event_refuses_the_batch_with_index_path_and_reason() -> None:
    bad = purchase(2)
    del bad["data"]["currency"]
    result = verdict([purchase(1), bad, "nope"])
    assert result.status == 422
    assert [p.to_dict() for p in result.problems] == [
        {"index": 1, "path": "data.currency", "reason": "field required"},
        {"index": 2, "path": "", "reason": "event must be a JSON object"},
    ]
    assert result.summary(3) == "2 of 3 events refused; nothing was published"
    assert sorted(result.refused) == [1, 2]  # what a Segment request dead-letters
    assert [a.position for a in result.admitted] == [0]


def test_an_item_of_several_events_is_refused_by_its_position_if_one_is_bad() -> None:
    items = {
        "ok": [purchase(1)],
        "mixed": [purchase(2), purchase(3, source="billing")],  # e.g. identify + link
    }
    result = admit(
        parse_each(["ok", "mixed"], lambda name: [parse_event(e) for e in items[name]]),
        key_source="shop",
        max_event_bytes=32 * 1024,
        batch=True,
    )
    assert list(result.refused) == [1]
    # The good half of the refused item is admitted here; intake drops refused positions.
    assert [a.position for a in result.admitted] == [0, 1]


def test_derived_types_are_refused_at_the_gate() -> None:
    forged = {
        **purchase(1),
        "type": "lifecycle.stage_changed",
        "data": {"to_stage": "loyal", "at": "2026-11-20T10:15:00Z", "cause": "forged"},
    }
    [problem] = verdict([forged], batch=False).problems
    assert (problem.kind, problem.path, problem.index) == (Reason.derived_type, "type", None)
    assert "published by CLM itself" in problem.reason


def test_a_key_publishes_only_its_own_source() -> None:
    assert source_allowed("shop", "shop") and source_allowed("shop/checkout", "shop")
    assert not source_allowed("shopping", "shop") and not source_allowed("billing", "shop")
    result = verdict([purchase(1), purchase(2, source="billing")])
    assert result.status == 403
    assert result.problems[0].index == 1 and result.problems[0].path == "source"


def test_an_event_over_the_size_limit_makes_the_request_too_large() -> None:
    big = purchase(2, note="x" * 2000)
    result = verdict([purchase(1), big], limit=1024)
    assert result.status == 413
    assert result.problems[0].index == 1
    assert "the limit is 1024" in result.problems[0].reason


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_allows_bursts_then_the_rate_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=100, burst=500, clock=clock)
    assert limiter.take("k1", 500) == 0
    assert limiter.take("k1", 200) == 2  # 200 tokens at 100/s
    assert limiter.take("k2", 500) == 0  # per key
    clock.now = 2.0
    assert limiter.take("k1", 200) == 0
    assert limiter.take("k1", 1) == 1


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket() -> None:
    limiter = RateLimiter(rate=10, burst=50, clock=Clock())
    assert limiter.take("k", 80) == 0
    assert RateLimiter(rate=0, burst=1, clock=Clock()).take("k", 10**6) == 0


def test_unstorable_text_is_refused_with_its_own_reason_and_422() -> None:
    result = verdict([purchase(1), purchase(2, note="Ni\x00ne")])
    assert result.status == 422
    [problem] = result.problems
    assert (problem.kind, problem.path, problem.index) == (
        Reason.unstorable_text,
        "data.note",
        1,
    )
