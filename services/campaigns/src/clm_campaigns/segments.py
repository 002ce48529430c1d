"""Segment membership: kept live by the consumer (each batch re-evaluates its customers
in its own transaction) and recomputed in the background when a segment is saved.

Why the two agree with a full evaluation: a consumed batch locks its customers, then
takes the segments' advisory lock shared and reads the live segments (a segment change
takes it exclusively, so it waits for the batch, and every batch after the change sees
the new version) and evaluates its customers against them.
A recompute page locks its customers too (so it waits for the batches that hold them)
and evaluates them under the lock against the segment's current version; a page of an
outdated version stops. Whatever a customer's last writer was, it evaluated the
customer's current projection against the segment's current version.

Entering or leaving is an occasion for triggers only when a consumed event caused it:
a recompute (a new or edited segment) messages nobody, and while one runs, a batch's
customers it has not reached yet have no settled membership to change from, so their
changes are written but are no occasion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clm_campaigns import metrics, repository
from clm_campaigns.condition_sql import condition_sql
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.domain.segments import CompiledSegment, Inputs, compile_segment_condition

log = logging.getLogger(__name__)


class SegmentCache:
    """Live segments, read each batch (under the segments' lock) and compiled once per
    version."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], CompiledSegment] = {}

    def compiled(self, segment_id: str, version: int, condition: str) -> CompiledSegment:
        key = (segment_id, version)
        if key not in self._compiled:
            # Checked when saved; a stored one must keep running under laxer older rules.
            self._compiled[key] = CompiledSegment(
                segment_id, version, compile_segment_condition(condition, check_types=False)
            )
        return self._compiled[key]

    async def live(self, session: AsyncSession) -> tuple[list[CompiledSegment], dict[str, str]]:
        """The live segments, and for those being recomputed, the last customer id the
        recompute has evaluated."""
        rows = await repository.live_segments(session)
        out = [self.compiled(i, v, c) for i, v, c, _ in rows]
        upto = {i: after for i, _, _, after in rows if after is not None}
        live = {(s.id, s.version) for s in out}
        for key in [k for k in self._compiled if k not in live]:
            del self._compiled[key]
        return out, upto


def _readers(live: list[CompiledSegment]) -> dict[str, list[CompiledSegment]]:
    """Input ("stage", "traits.plan", or a whole map "traits") -> the segments reading it;
    a change of "traits.plan" also concerns the readers of the whole "traits"."""
    out: dict[str, list[CompiledSegment]] = {}
    for seg in live:
        for name in seg.inputs:
            out.setdefault(name, []).append(seg)
    return out


@dataclass(frozen=True)
class Change:
    """A customer entering or leaving a segment: a trigger occasion."""

    stay: repository.Stay
    entered: bool


@dataclass
class Plan:
    """A batch's membership changes, worked out before its customers are saved (their
    `segments` change with them) and written after (a membership needs its customer)."""

    enter: list[tuple[str, str, int]] = field(default_factory=list)  # segment, customer, version
    leave: list[tuple[str, str]] = field(default_factory=list)  # segment, customer
    recomputing: dict[str, str] = field(default_factory=dict)

    def move(self, s: CustomerState, segment_id: str, version: int, now: bool) -> bool:
        """Plan (and note in `s.segments`) what `now` (matching the segment's `version`)
        changes for the customer; whether it changes anything. An entry of an older
        version still has its row: it is rewritten (no new entry) or deleted."""
        held = s.segments.get(segment_id)
        if now and held != version:
            self.enter.append((segment_id, s.customer_id, version))
            s.segments[segment_id] = version
        elif not now and held is not None:
            self.leave.append((segment_id, s.customer_id))
            del s.segments[segment_id]
        else:
            return False
        return True


async def evaluate(
    session: AsyncSession,
    cache: SegmentCache,
    states: Iterable[CustomerState],
    before: Mapping[str, Inputs] | None = None,
) -> Plan:
    """Re-evaluate these customers against the live segments and update their `segments`
    (in place) to who they are now. With `before` (their inputs as loaded), a customer is
    evaluated only against the segments that read something that changed: nothing else
    can move them. An entry of an older version (the segment changed, its recompute has
    not reached the customer) has its row still: evaluated, it is rewritten to the
    current version or deleted; otherwise the recompute will."""
    states = list(states)
    if not states:
        return Plan()
    live, recomputing = await cache.live(session)
    plan = Plan(recomputing=recomputing)
    current = {seg.id: seg.version for seg in live}
    readers = _readers(live)
    for s in states:
        # Entries of deleted segments go (their rows went with the segment).
        s.segments = {i: v for i, v in s.segments.items() if i in current}
        prior = None if before is None else before.get(s.customer_id)
        if prior is None:
            affected: Iterable[CompiledSegment] = live
        else:
            changed = prior.changed(s)
            affected = {seg.id: seg for c in changed for seg in readers.get(c, ())}.values()
        for seg in affected:
            plan.move(s, seg.id, seg.version, seg.matches(s))
    return plan


async def write(session: AsyncSession, plan: Plan) -> list[Change]:
    """Write the plan's memberships (its customers saved already) and return the changes
    that are occasions (see the module's docstring)."""
    entered, left = await repository.write_memberships(session, plan.enter, plan.leave)
    if entered or left:

        def committed(_session: Any) -> None:  # counted once durable
            metrics.SEGMENT_CHANGES.labels("entered").inc(len(entered))
            metrics.SEGMENT_CHANGES.labels("left").inc(len(left))

        sa.event.listen(session.sync_session, "after_commit", committed, once=True)
    changes = [Change(s, True) for s in entered] + [Change(s, False) for s in left]
    for segment_id, upto in plan.recomputing.items():
        # Compared by the database: the recompute's keyset order is its collation's.
        ids = {c.stay.customer_id for c in changes if c.stay.segment_id == segment_id}
        reached = await repository.ids_upto(session, ids, upto) if ids else set()
        changes = [
            c for c in changes if c.stay.segment_id != segment_id or c.stay.customer_id in reached
        ]
    return changes


async def estimate(session: AsyncSession, segment: CompiledSegment, *, page: int = 5000) -> int:
    """How many customers match (unlocked): counted by PostgreSQL when the condition
    translates to SQL, with the rows it leaves undecided evaluated here; otherwise every
    customer evaluated here, in keyset pages."""
    translated = condition_sql(segment.condition.source)
    if translated is None:
        return await _count_here(session, segment, page)
    count, undecided = await repository.count_matching(
        session, translated.matches, translated.undecided
    )
    if undecided:
        count += await _count_here(session, segment, page, where=translated.undecided)
    return count


async def _count_here(
    session: AsyncSession, segment: CompiledSegment, page: int, where: Any = None
) -> int:
    count, after = 0, ""
    while True:
        states = await repository.customers_page(
            session, after, page, reads=segment.condition.reads, where=where
        )
        count += sum(1 for s in states if segment.matches(s))
        if len(states) < page:
            return count
        after = states[-1].customer_id


class Recompute:
    """Recomputes the membership of saved segments, paced: one locked page of customers
    per transaction and a short pause between pages, so consumed batches are never
    held long. Progress is kept on the segment: a restart resumes where it stopped."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cache: SegmentCache,
        *,
        page: int = 2000,
        pause: float = 0.05,
        size_interval: timedelta = timedelta(hours=1),
        size_retention: timedelta = timedelta(days=400),
    ) -> None:
        self.sessions, self.cache, self.page, self.pause = sessions, cache, page, pause
        self.size_interval, self.size_retention = size_interval, size_retention
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.pass_()
                await self.sample_sizes()
            except Exception:
                log.exception("segment recompute failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)
            except TimeoutError:
                pass
            self._wake.clear()

    async def sample_sizes(self) -> int:
        """Size over time: every recomputed segment's size, once per interval."""
        async with self.sessions() as session, session.begin():
            return await repository.sample_sizes(session, self.size_interval, self.size_retention)

    async def pass_(self) -> None:
        async with self.sessions() as session:
            pending = await repository.segments_to_recompute(session)
        for segment_id in pending:
            more = True
            while more:
                more = await self.step(segment_id)
                await asyncio.sleep(self.pause)  # paced: the consumer comes first

    async def step(self, segment_id: str) -> bool:
        """One page; False when the segment is done (or gone, or changed meanwhile)."""
        async with self.sessions() as session, session.begin():
            found = await repository.segment_for_recompute(session, segment_id)
            if found is None:
                return False
            version, condition, progress = found
            if progress is None or progress.get("finished_at") or progress["version"] != version:
                return False
            segment = self.cache.compiled(segment_id, version, condition)
            if progress["total"] is None:
                progress["total"] = await repository.count_customers(session)
            states = await repository.customers_page(
                session, progress["after"], self.page, lock=True, reads=segment.condition.reads
            )
            plan = Plan()
            moved = [s for s in states if plan.move(s, segment_id, version, segment.matches(s))]
            await repository.write_memberships(session, plan.enter, plan.leave)
            await repository.save_segment_maps(session, moved)
            progress["done"] += len(states)
            if states:
                progress["after"] = states[-1].customer_id
            if len(states) < self.page:
                progress["finished_at"] = datetime.now(UTC).isoformat()
                # Counted when it started; customers seen since are done too.
                progress["total"] = max(progress["total"], progress["done"])
            # Under the segment's lock: a change waits for this page, then restarts.
            await repository.save_recompute(session, segment_id, progress)
        return progress["finished_at"] is None
