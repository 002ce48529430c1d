"""What the stage engine does with a batch of events, a batch of due timers and a model
change. Every method works inside the caller's transaction and never commits: the
consumer runner, the timer loop and the backfill command own the transactions."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from clm_events.consumer import Delivery
from clm_events.envelope import IdentityLinkedEvent, LifecycleScoreModelServedEvent
from clm_events.rfm import RFM_FACTS
from clm_events.scoremodel import ServedModel
from clm_events.topics import Topics
from clm_stage_engine import identities, metrics
from clm_stage_engine import repository as repo
from clm_stage_engine.domain.inputs import Input, from_event, from_us, to_us
from clm_stage_engine.domain.model import DEFAULT_MODEL, CompiledModel, ModelSpec, compile_model
from clm_stage_engine.domain.timeline import (
    LOOK_AHEAD,
    Outcome,
    Timeline,
    Transition,
    advance,
    reevaluate,
)
from clm_stage_engine.outbound import Origin, publications

log = logging.getLogger(__name__)

SETTLE_SECONDS = 60.0

_HEADERS = json.dumps([["content-type", "application/cloudevents+json"]])  # jsonb text


def load_timeline(customer: str, stored: tuple[bytes, datetime | None] | None) -> Timeline:
    if stored is None:
        return Timeline(customer)
    blob, until = stored
    return Timeline.from_json(customer, json.loads(blob.decode()), to_us(until) if until else None)


async def load_timelines(
    session: AsyncSession,
    stored: Mapping[str, tuple[bytes, datetime | None] | None],
    new_inputs: dict[str, list[Input]] | None = None,
) -> dict[str, Timeline]:
    """Timelines of these customers, with their stored inputs read only where the
    coming step needs them (a late input, or a timeline without its fold)."""
    timelines = {cid: load_timeline(cid, row) for cid, row in stored.items()}
    need = [
        cid
        for cid, tl in timelines.items()
        if tl.needs_inputs(new_inputs.get(cid, []) if new_inputs else [])
    ]
    if need:
        found = await repo.load_inputs(session, need)
        for cid in need:
            timelines[cid].load_inputs([json.loads(raw) for raw in found.get(cid, [])])
    return timelines


# How many versions back the model-change sweep looks for ones that evaluate like the
# current one (see Models.current).
EQUIVALENT_LOOK_BACK = 30


class Models:
    """The current lifecycle model, compiled once per version. Every batch asks the
    database for the latest version number, so all replicas switch within one batch."""

    def __init__(self) -> None:
        self._current: CompiledModel | None = None
        # The oldest version from which on every version evaluates every customer as the
        # current one does: new RFM cut points under rules that read no RFM fact.
        self.equivalent_since = 0

    async def current(self, session: AsyncSession) -> CompiledModel:
        version = await repo.latest_model_version(session)
        if version is None:
            await repo.ensure_model(session, DEFAULT_MODEL.to_json())
            version = 1
        if self._current is None or self._current.version != version:
            row = await repo.get_model(session, version)
            assert row is not None
            self._current = compile_row(row)
            self.equivalent_since = await self._equivalent_since(session, row, self._current)
        return self._current

    async def _equivalent_since(
        self, session: AsyncSession, row: repo.ModelRow, model: CompiledModel
    ) -> int:
        if any(n in RFM_FACTS for n in model.used):
            return row.version
        since = row.version
        while since > 1 and row.version - since < EQUIVALENT_LOOK_BACK:
            before = await repo.get_model(session, since - 1)
            if before is None or not _only_cuts_differ(before, row):
                break
            since -= 1
        return since

    async def adopt(self, session: AsyncSession, served: ServedModel) -> int | None:
        """Make a served score model current: a new lifecycle model version (same rules),
        which the model-change sweep applies to every customer. None when it changes
        nothing: an older or a replayed announcement (model and cut-point versions), or
        the same parameters and cut points."""
        current = (await self.current(session)).served
        if current is not None and (
            served.order <= current.order or served.same_parameters(current)
        ):
            return None
        return await repo.add_model(session, "scoring", score_model=served.to_json())


def _only_cuts_differ(a: repo.ModelRow, b: repo.ModelRow) -> bool:
    """Same rules and the same served score model but for its RFM cut points."""
    if a.spec != b.spec or (a.score_model is None) != (b.score_model is None):
        return False
    if a.score_model is None or b.score_model is None:
        return True
    one, other = ServedModel.from_json(a.score_model), ServedModel.from_json(b.score_model)
    return dataclasses.replace(one, rfm=other.rfm).same_parameters(other)


def compile_row(row: repo.ModelRow) -> CompiledModel:
    """A stored version, compiled with the score model it carries."""
    served = ServedModel.from_json(row.score_model) if row.score_model else None
    return compile_model(ModelSpec.from_json(row.spec), row.version, served)


class StageEngine:
    def __init__(
        self,
        topics: Topics,
        models: Models | None = None,
        *,
        look_ahead: int = LOOK_AHEAD,
        settle_seconds: float = SETTLE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.topics = topics
        self.models = models or Models()
        # Ticks (days) the timer probes ahead for a customer's due time. Events only set
        # the next tick: probing is the timer's work, off the event path.
        self.look_ahead = look_ahead
        # How long after a customer's latest input the timer leaves them alone. A history
        # arriving one call at a time (an import through the API, a replay) would
        # otherwise be moved by time to "now" after each event, and every next, older
        # event would rewrite what that published.
        self.settle_seconds = settle_seconds
        self.clock = clock

    # -- entry points ----------------------------------------------------------------

    async def handle(self, session: AsyncSession, deliveries: Sequence[Delivery]) -> None:
        """A consumed batch: group the inputs by the customer they count for (an
        anonymous id's are its customer's once linked), then one pass per customer."""
        by_customer: dict[str, list[Input]] = {}
        links: list[identities.Link] = []
        kinds: Counter[str] = Counter()
        for d in deliveries:
            if isinstance(d.event, LifecycleScoreModelServedEvent):
                served = ServedModel.from_json(d.event.data.model_dump())
                if (version := await self.models.adopt(session, served)) is not None:
                    log.info(
                        "score model adopted",
                        extra={"score_model_version": served.version, "version": version},
                    )
                continue
            i = from_event(d.event)
            if i is None:  # a derived or foreign type on our topics: a producer bug
                raise ValueError(f"event type {d.event.type!r} is not a stage-engine input")
            if isinstance(d.event, IdentityLinkedEvent):
                links.append(identities.Link(d.event.data.anonymous_id, d.event.subject, i.at))
            by_customer.setdefault(d.event.subject, []).append(i)
            kinds[i.kind] += 1
        merged = await identities.resolve(session, by_customer, links)
        # Merge notices and retractions go first: a consumer of the transitions topic
        # learns of a merge before the transitions it rebuilt.
        await repo.add_outbox(session, [self._topic_row(*m) for m in merged.messages])
        await self.apply(session, merged.by_customer, kind="events")
        for kind, n in kinds.items():
            metrics.EVENTS.labels(kind).inc(n)

    async def apply(
        self,
        session: AsyncSession,
        by_customer: dict[str, list[Input]],
        *,
        clock: int | None = None,
        kind: str = "events",
        publish: bool = True,
        origin: Origin | None = None,
    ) -> int:
        """Add inputs to customers' timelines and evaluate them up to their newest input
        (or `clock`). Returns the number of transitions written. Live events (`kind`
        "events") hold the customers back from the timer for `settle_seconds`."""
        started = time.perf_counter()
        model = await self.models.current(session)
        stored = await repo.lock_customers(session, list(by_customer))
        new = {cid for cid in by_customer if cid not in stored}
        live = kind == "events" and self.settle_seconds > 0
        written = await self._process(
            session,
            model,
            await load_timelines(session, stored | dict.fromkeys(new), by_customer),
            lambda tl: advance(tl, model, by_customer[tl.customer], clock),
            publish=publish,
            origin=origin,
            settle=self.clock() + timedelta(seconds=self.settle_seconds) if live else None,
            new=new,
        )
        metrics.BATCH_SECONDS.labels(kind).observe(time.perf_counter() - started)
        return written

    async def sweep_due(self, session: AsyncSession, now: datetime, limit: int) -> int:
        """Evaluate up to `limit` customers whose timer is due, up to `now`. Returns how
        many customers were claimed."""
        started = time.perf_counter()
        model = await self.models.current(session)
        stored, quiet = await repo.claim_due(session, now, limit, model.version)
        clock, ahead = to_us(now), self.look_ahead
        await self._process(
            session,
            model,
            await load_timelines(session, dict(stored)),
            lambda tl: advance(
                tl, model, [], clock, look_ahead=ahead, quiet_until=quiet.get(tl.customer)
            ),
        )
        metrics.BATCH_SECONDS.labels("timer").observe(time.perf_counter() - started)
        return len(stored)

    async def sweep_model_change(self, session: AsyncSession, now: datetime, limit: int) -> int:
        """Re-evaluate up to `limit` customers evaluated under an older model version."""
        started = time.perf_counter()
        model = await self.models.current(session)
        # New cut points alone change nothing for rules that read no RFM fact: those
        # customers only take the version number (their due times stay right).
        since = self.models.equivalent_since
        marked = await repo.mark_outdated(session, since, model.version, limit)
        stored = await repo.claim_outdated(session, model.version, limit - marked)
        if not stored:
            return marked
        clock = to_us(now)
        await self._process(
            session,
            model,
            await load_timelines(session, dict(stored)),
            # One probe: every customer at once; later re-checks probe further.
            lambda tl: reevaluate(tl, model, clock, look_ahead=min(1, self.look_ahead)),
            full=True,
        )
        await repo.mark_model_version(session, list(stored), model.version)
        metrics.BATCH_SECONDS.labels("model_change").observe(time.perf_counter() - started)
        return marked + len(stored)

    # -- one batch -------------------------------------------------------------------

    async def _process(
        self,
        session: AsyncSession,
        model: CompiledModel,
        timelines: dict[str, Timeline],
        step: Callable[[Timeline], Outcome],
        *,
        publish: bool = True,
        origin: Origin | None = None,
        settle: datetime | None = None,
        new: set[str] | None = None,
        full: bool = False,
    ) -> int:
        rows: list[repo.CustomerRow] = []
        clocks: list[repo.Clock] = []
        truncate: list[tuple[str, int]] = []
        history: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        inputs: list[tuple[str, str, str, int, bytes]] = []
        failures: Counter[str] = Counter()
        moves: Counter[tuple[str, str, str]] = Counter()
        for cid in sorted(timelines):  # domain code: one customer at a time
            tl = timelines[cid]
            out = step(tl)
            if not out.touched:
                continue
            inputs += [(cid, i.source, i.id, i.at, _json(i.to_json())) for i in out.fresh]
            failures.update(out.rule_failures)
            gone, published = out.news(cid, tl.history)
            if out.dropped:
                truncate.append((cid, out.kept))
                metrics.RETRACTED.inc(len(gone))
            for n, t in enumerate(out.added):
                history.append(_history_row(cid, out.kept + n, t.id(cid), t))
            if publish:
                for event_id, value in publications(tl, out, origin):
                    outbox.append(self._topic_row(cid, event_id, value))
                for t in (tl.history[p] for p in published):
                    moves[(t.from_stage or "none", t.to_stage, t.cause)] += 1
            until = from_us(tl.evaluated_until) if tl.evaluated_until is not None else None
            due = tl.due_at
            # Time moves a customer only once their inputs have stopped arriving a while.
            hold = settle if out.fresh else None
            if out.inputs_changed or out.history_changed or full or (new and cid in new):
                rows.append(self._row(tl, model.version, model.served, until, due, hold))
            else:
                clocks.append((cid, until, from_us(due) if due is not None else None, hold))
        await repo.add_inputs(session, inputs)
        await repo.save_customers(session, rows)
        await repo.save_clocks(session, clocks)
        await repo.replace_transitions(session, truncate, history)
        await repo.add_outbox(session, outbox)
        for rule, n in failures.items():
            metrics.RULE_ERRORS.labels(rule).inc(n)
        for labels, n in moves.items():
            metrics.TRANSITIONS.labels(*labels).inc(n)
        return len(history)

    @staticmethod
    def _row(
        tl: Timeline,
        version: int,
        served: ServedModel | None,
        until: datetime | None,
        due: int | None,
        settle: datetime | None,
    ) -> repo.CustomerRow:
        f = tl.last_facts
        if f is None:
            f = tl.fold().facts(tl.evaluated_until or 0)
        # Scores as of the clock, for the columns that rank and filter customers.
        scores = tl.fold().with_scores(f, tl.evaluated_until or 0, served)
        since = tl.since
        return repo.CustomerRow(
            customer_id=tl.customer,
            stage=tl.stage,
            stage_since=from_us(since) if since is not None else None,
            evaluated_until=until,
            due_at=from_us(due) if due is not None else None,
            model_version=version,
            clv=scores["clv"],
            churn_probability=scores["churn_probability"],
            latest_nps=f["latest_nps"],
            timeline=_json(tl.to_json()),
            settle_until=settle,
        )

    def _topic_row(self, customer: str, event_id: str, value: bytes) -> dict[str, Any]:
        return {
            "topic": self.topics.transitions,
            "key": customer.encode(),
            "value": value,
            "headers": _HEADERS,
            "event_id": event_id,
        }


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _history_row(customer: str, position: int, tid: str, t: Transition) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "position": position,
        "transition_id": tid,
        "at": from_us(t.at),
        "from_stage": t.from_stage,
        "to_stage": t.to_stage,
        "cause": t.cause,
        "event_source": t.event[0] if t.event else None,
        "event_id": t.event[1] if t.event else None,
        "event_type": t.event[2] if t.event else None,
        "model_version": t.model_version,
        "facts": json.dumps(t.facts or {}, separators=(",", ":"), ensure_ascii=False),
    }
