"""The consumer runner's promises, against the real broker and database."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import sqlalchemy as sa
from kit import encode, produce, purchase, read_topic
from shopkit import Harness, shop_handler

from clm_events import metrics
from clm_events.consumer import ConsumerRunner
from clm_events.deadletter import reason_of
from clm_events.envelope import decode_kafka_record


async def test_round_trip_applies_each_event_and_publishes_derived_events_in_order(
    harness: Harness,
) -> None:
    events = [purchase(f"cust-{i % 5}", f"{i}", amount="12.50") for i in range(20)]
    await produce(harness.bootstrap, harness.topics.domain("purchase.completed"), events)
    runner = harness.runner()
    relay = harness.relay()
    runner_task = await harness.start(runner)
    relay_task = asyncio.create_task(relay.run())
    try:

        async def all_applied() -> bool:
            return sum(n for n, _ in (await harness.shop.counts()).values()) == 20

        await harness.until(all_applied)
        assert await harness.shop.counts() == {f"cust-{i}": (4, Decimal("50.00")) for i in range(5)}

        derived = await read_topic(harness.bootstrap, harness.topics.scores, expect=20)
        assert len(derived) == 20
        per_customer: dict[str, list[float]] = {}
        for record in derived:
            event = decode_kafka_record(record.headers, record.value)
            assert record.key == event.subject.encode()
            per_customer.setdefault(event.subject, []).append(event.data.expected_purchases)  # type: ignore[union-attr]
        # Per key, derived events arrive in the order their state changed.
        assert per_customer == {f"cust-{i}": [1.0, 2.0, 3.0, 4.0] for i in range(5)}
    finally:
        relay.stop()
        await relay_task
        runner_task.cancel()


async def test_the_same_event_twice_is_applied_once(harness: Harness) -> None:
    topic = harness.topics.domain("purchase.completed")
    first = purchase("cust-1", "A")
    # Twice in one batch, and once more later in another batch.
    await produce(harness.bootstrap, topic, [first, first, purchase("cust-1", "B")])
    runner = harness.runner()
    await runner.start()
    while await runner.poll_once() == 0:
        pass
    await produce(harness.bootstrap, topic, [first])
    while await runner.poll_once() == 0:
        pass
    assert await harness.shop.counts() == {"cust-1": (2, Decimal("20.00"))}
    # What SREs see: two applied, two recognised as duplicates.
    counted = {
        s.labels["outcome"]: s.value
        for metric in metrics.CONSUMER_MESSAGES.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels["group"] == harness.group
    }
    assert counted == {"applied": 2.0, "duplicate": 2.0}


async def test_garbage_and_invalid_events_go_to_the_dead_letter_topic_and_the_consumer_goes_on(
    harness: Harness,
) -> None:
    topic = harness.topics.domain("purchase.completed")
    invalid = purchase("cust-2", "bad")
    del invalid["data"]["amount"]
    garbage = b"\x00\xffnot json at all"
    # From a producer that wrote to the domain topic directly, past the gate: PostgreSQL
    # could not store it, so it is refused as such, not left to fail as a handler error.
    unstorable = purchase(
        "cust-2", "nul", data={"order_id": "n\x00l", "amount": "1", "currency": "EUR"}
    )
    await produce(
        harness.bootstrap,
        topic,
        [garbage, invalid, unstorable, purchase("cust-2", "good")],
        key=lambda v: b"cust-2",
    )
    kinds = ("invalid_event", "unstorable_text", "handler_error")
    before = {k: metrics.DEADLETTERED.labels(harness.group, topic, k)._value.get() for k in kinds}
    runner = harness.runner()
    await harness.start(runner)

    async def good_applied() -> bool:
        return "cust-2" in await harness.shop.counts()

    await harness.until(good_applied)
    assert await harness.shop.counts() == {"cust-2": (1, Decimal("10.00"))}

    dead = await read_topic(harness.bootstrap, harness.topics.deadletter, expect=3)
    assert len(dead) == 3
    by_value = {r.value: r for r in dead}
    assert set(by_value) == {garbage, encode(invalid), encode(unstorable)}  # original bytes
    for record in dead:
        info = reason_of(record.headers)
        assert record.key == b"cust-2"
        assert info["topic"] == topic
        assert info["group"] == harness.group
        assert int(info["offset"]) >= 0 and int(info["partition"]) >= 0
    assert "data.amount" in reason_of(by_value[encode(invalid)].headers)["reason"]
    nul = reason_of(by_value[encode(unstorable)].headers)
    assert nul["kind"] == "unstorable_text"
    assert "data.order_id: text contains U+0000" in nul["reason"]
    after = {k: metrics.DEADLETTERED.labels(harness.group, topic, k)._value.get() for k in kinds}
    assert {k: after[k] - before[k] for k in kinds} == {
        "invalid_event": 2,
        "unstorable_text": 1,
        "handler_error": 0,
    }


async def test_a_message_the_handler_refuses_is_dead_lettered_alone(harness: Harness) -> None:
    topic = harness.topics.domain("purchase.completed")
    events = [purchase("cust-3", "1"), purchase("cust-3", "poison"), purchase("cust-3", "2")]
    await produce(harness.bootstrap, topic, events)
    handler = shop_handler(
        harness.shop, harness.topics, fail_on=lambda d: d.event.data.order_id == "poison"
    )  # type: ignore[union-attr]
    runner = harness.runner(handler=handler)
    await runner.start()
    while await runner.poll_once() == 0:
        pass
    assert await harness.shop.counts() == {"cust-3": (2, Decimal("20.00"))}
    dead = await read_topic(harness.bootstrap, harness.topics.deadletter, expect=1)
    assert [reason_of(r.headers)["reason"] for r in dead] == [
        "handler error: ValueError: cannot apply order poison"
    ]


class Crash(BaseException):
    """Stands for the process dying: nothing after this point runs."""


class CrashBeforeOffsetCommit(ConsumerRunner):
    async def _commit(self, offsets):  # type: ignore[no-untyped-def]
        raise Crash()


async def test_a_crash_between_db_commit_and_offset_commit_does_not_apply_twice(
    harness: Harness,
) -> None:
    topic = harness.topics.domain("purchase.completed")
    await produce(harness.bootstrap, topic, [purchase(f"cust-{i}", f"{i}") for i in range(8)])
    doomed = harness.runner(CrashBeforeOffsetCommit)
    await doomed.start()
    applied = 0
    try:
        while applied < 8:  # the state of every batch is committed, no offset ever is
            await doomed.poll_once()
            applied = sum(n for n, _ in (await harness.shop.counts()).values())
    except Crash:
        pass
    await doomed.stop()
    state_after_crash = await harness.shop.counts()
    assert state_after_crash  # the batch before the crash is durable

    survivor = harness.runner()
    await harness.start(survivor)

    async def all_applied() -> bool:
        return len(await harness.shop.counts()) == 8

    await harness.until(all_applied)
    await asyncio.sleep(1.0)  # let any redelivered duplicates be processed too
    assert await harness.shop.counts() == {f"cust-{i}": (1, Decimal("10.00")) for i in range(8)}


async def test_a_database_failure_is_retried_without_committing_offsets(harness: Harness) -> None:
    topic = harness.topics.domain("purchase.completed")
    await produce(harness.bootstrap, topic, [purchase("cust-4", "1"), purchase("cust-4", "2")])
    attempts = 0
    inner = shop_handler(harness.shop, harness.topics)

    async def flaky(session, deliveries):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # A real connection loss mid-transaction: the server ends our own backend.
            await session.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
        await inner(session, deliveries)

    retries_before = metrics.CONSUMER_RETRIES.labels(harness.group)._value.get()
    runner = harness.runner(handler=flaky)
    await runner.start()
    processed = 0
    while processed < 2:
        processed += await runner.poll_once()
    assert attempts >= 2
    assert await harness.shop.counts() == {"cust-4": (2, Decimal("20.00"))}
    assert metrics.CONSUMER_RETRIES.labels(harness.group)._value.get() > retries_before


async def test_two_consumers_split_partitions_and_one_takes_over_when_the_other_stops(
    harness: Harness,
) -> None:
    topic = harness.topics.domain("purchase.completed")
    a, b = harness.runner(), harness.runner()
    await harness.start(a)
    b_task = await harness.start(b)

    async def split() -> bool:
        return len(a.assignment()) == 2 and len(b.assignment()) == 2

    await harness.until(split, timeout=30)
    assert a.assignment().isdisjoint(b.assignment())

    await produce(harness.bootstrap, topic, [purchase(f"c{i}", f"first-{i}") for i in range(40)])

    async def first_wave() -> bool:
        return sum(n for n, _ in (await harness.shop.counts()).values()) == 40

    await harness.until(first_wave)

    await b.stop()
    await b_task

    async def taken_over() -> bool:
        return len(a.assignment()) == 4

    await harness.until(taken_over, timeout=30)
    await produce(harness.bootstrap, topic, [purchase(f"c{i}", f"second-{i}") for i in range(40)])

    async def second_wave() -> bool:
        return sum(n for n, _ in (await harness.shop.counts()).values()) >= 80

    await harness.until(second_wave)
    await asyncio.sleep(1.0)
    assert await harness.shop.counts() == {f"c{i}": (2, Decimal("20.00")) for i in range(40)}


async def test_lag_and_latency_metrics_follow_the_partition(harness: Harness) -> None:
    """SREs watch lag from the fetch high-water mark, not from ListOffsets."""
    topic = harness.topics.domain("purchase.completed")
    # One customer, so every message lands on one partition.
    await produce(harness.bootstrap, topic, [purchase("cust-lag", f"{i}") for i in range(30)])
    latency = metrics.EVENT_LATENCY.labels(harness.group, topic)
    observed_before = _histogram_count(latency)
    runner = harness.runner(max_records=10)
    await runner.start()
    while await runner.poll_once() == 0:
        pass
    await runner.poll_once()  # the next fetch reports the high-water mark after our commit
    lags = _lag_samples(harness.group, topic)
    assert len(lags) == 1 and 0 < next(iter(lags.values())) <= 20

    processed = sum(n for n, _ in (await harness.shop.counts()).values())
    while processed < 30:
        await runner.poll_once()
        processed = sum(n for n, _ in (await harness.shop.counts()).values())
    await runner.poll_once()
    assert set(_lag_samples(harness.group, topic).values()) == {0.0}
    assert _histogram_count(latency) - observed_before == 30


def _lag_samples(group: str, topic: str) -> dict[str, float]:
    return {
        s.labels["partition"]: s.value
        for metric in metrics.CONSUMER_LAG.collect()
        for s in metric.samples
        if s.labels["group"] == group and s.labels["topic"] == topic
    }


def _histogram_count(child: object) -> float:
    for metric in child.collect():  # type: ignore[attr-defined]
        for s in metric.samples:
            if s.name.endswith("_count"):
                return float(s.value)
    return 0.0


async def test_a_failed_batch_is_read_again_not_skipped(harness: Harness) -> None:
    """An error the runner does not expect, mid-batch, must not lose the batch: the fetch
    position has moved past it, so the runner goes back to the committed offsets."""
    topic = harness.topics.domain("purchase.completed")
    await produce(harness.bootstrap, topic, [purchase("cust-5", "1"), purchase("cust-5", "2")])

    class FailsOnce(ConsumerRunner):
        failed = False

        async def _apply(self, deliveries):  # type: ignore[no-untyped-def]
            if not self.failed:
                self.failed = True
                raise RuntimeError("unexpected")
            return await super()._apply(deliveries)

    await harness.start(harness.runner(FailsOnce))

    async def applied() -> bool:
        return (await harness.shop.counts()).get("cust-5") == (2, Decimal("20.00"))

    await harness.until(applied)
