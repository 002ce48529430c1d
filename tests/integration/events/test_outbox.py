"""The outbox relay's promises: nothing written is lost, ids are stable across re-sends."""

from __future__ import annotations

from collections import Counter

from kit import produce, purchase, read_topic
from shopkit import Harness, Shop

from clm_events.envelope import decode_kafka_record
from clm_events.outbox import OutboxRelay


class Crash(BaseException):
    """Stands for the process dying: nothing after this point runs."""


class CrashBeforeMarkingPublished(OutboxRelay):
    async def _mark_published(self, session, ids):  # type: ignore[no-untyped-def]
        raise Crash()


async def _apply_purchases(harness: Harness, n: int) -> None:
    await produce(
        harness.bootstrap,
        harness.topics.domain("purchase.completed"),
        [purchase(f"cust-{i}", f"{i}") for i in range(n)],
    )
    runner = harness.runner()
    await runner.start()
    done = 0
    while done < n:
        done += await runner.poll_once()


async def test_events_committed_before_a_crash_are_published_by_the_next_relay(
    harness: Harness,
    shop: Shop,
) -> None:
    # The service committed state + outbox rows, then died before any relay pass.
    await _apply_purchases(harness, 6)
    assert await shop.unpublished() == 6

    assert await harness.relay().publish_pending() == 6
    published = await read_topic(harness.bootstrap, harness.topics.scores, expect=6)
    assert sorted(decode_kafka_record(r.headers, r.value).subject for r in published) == [
        f"cust-{i}" for i in range(6)
    ]
    assert await shop.unpublished() == 0


async def test_a_crash_after_sending_but_before_marking_resends_with_the_same_ids(
    harness: Harness,
    shop: Shop,
) -> None:
    await _apply_purchases(harness, 5)
    try:
        await harness.relay(CrashBeforeMarkingPublished).publish_pending()
    except Crash:
        pass
    assert await shop.unpublished() == 5  # the marks rolled back with the crash

    assert await harness.relay().publish_pending() == 5
    assert await shop.unpublished() == 0
    records = await read_topic(harness.bootstrap, harness.topics.scores, expect=10)
    ids = Counter(decode_kafka_record(r.headers, r.value).id for r in records)
    # At least once, never lost, and a re-send is recognisable as the same event.
    assert set(ids) == {f"score-cust-{i}-1" for i in range(5)}
    assert set(ids.values()) == {2}


async def test_only_one_relay_publishes_at_a_time(harness: Harness, shop: Shop) -> None:
    await _apply_purchases(harness, 3)
    first, second = harness.relay(), harness.relay()
    async with shop.sessions() as session, session.begin():
        # Hold the relay lock as a running relay would, mid-pass.
        from sqlalchemy import func, select

        await session.execute(select(func.pg_advisory_xact_lock(first._lock_id)))
        assert await second.publish_pending() == 0
    assert await first.publish_pending() == 3
