"""A customer's timeline: their inputs, stage history and the clock it is evaluated to.

The history is a pure function of (the set of inputs, the model, the clock): evaluation
points are every input, in (time, source, id) order, and every timer tick (UTC midnight,
`TICK`) after the customer's first purchase or subscription event. At each point the
rules see the facts as of that moment and may move the customer one stage.

Processing order does not matter: an input older than the evaluated clock rewinds the
history to its time and replays from there. That is also why a backfill, which sees
every input at once, ends with exactly the history live processing built event by event
and tick by tick.

The due time is the first tick at which time alone could move the customer. After an
event it is simply the next tick; the timer then looks ahead tick by tick over facts
that only age (rules are opaque CEL, so probing is the sound way to find the moment)
and stores the first tick whose evaluation differs, or the end of the look-ahead as a
re-check. A customer is then left alone until that tick, and the ticks before it, known
to change nothing, are not evaluated again. Each re-check probes up to twice as far as
the last one (up to the configured look-ahead, shortened by a per-customer hash so
customers woken together drift apart): a customer woken every day costs one probe, a
quiet one is woken ever more rarely.

Scores are not inputs: a rule reading the churn probability or the CLV gets them as of
the moment evaluated, under the served score model the lifecycle model version carries
(domain.facts.Accumulator.score_fact). Scores stamped with the wall clock would make the
history depend on when they arrived; these depend only on the events and the model.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clm_stage_engine.domain.facts import Accumulator, to_json
from clm_stage_engine.domain.inputs import SCORE, US_PER_DAY, Input
from clm_stage_engine.domain.model import CompiledModel, Scores

TICK = US_PER_DAY

EVENT, TIME, MODEL_CHANGE = "event", "time", "model_change"

# Ticks (days) the timer probes ahead for a customer's due time, unless configured.
LOOK_AHEAD = 30
# Transitions a customer's timeline remembers as retracted (their republication ids).
MAX_RETRACTIONS_KEPT = 100


def next_tick(moment: int) -> int:
    """The first timer tick strictly after `moment`."""
    return (moment // TICK + 1) * TICK


@dataclass(frozen=True, slots=True)
class Transition:
    at: int
    from_stage: str | None
    to_stage: str
    cause: str  # event, time or model_change
    event: tuple[str, str, str] | None  # (source, id, type) of the deciding event
    model_version: int
    facts: dict[str, Any] | None = field(default=None, compare=False)

    def id(self, customer: str) -> str:
        """Stable and content-derived: a replay that rebuilds the same transition gives it
        the same id, so consumers deduplicate it."""
        key = [customer, self.at, self.from_stage, self.to_stage, self.cause, self.event]
        return "tr-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]

    def compact(self) -> list[Any]:
        return [self.at, self.from_stage, self.to_stage, self.cause, self.event, self.model_version]

    @classmethod
    def from_compact(cls, raw: list[Any]) -> Transition:
        event = tuple(raw[4]) if raw[4] is not None else None  # our own JSON: types are right
        return cls(raw[0], raw[1], raw[2], raw[3], event, raw[5])


@dataclass
class Outcome:
    kept: int  # history positions [0, kept) are unchanged
    dropped: list[Transition]  # old positions >= kept, replaced by `added`
    added: list[Transition]
    fresh: list[Input]  # inputs not seen before, to be stored
    rule_failures: list[str] = field(default_factory=list)
    # False: only repeats of stored inputs and no later clock; nothing to store, and the
    # stored due time (found by the timer's look-ahead) stands.
    touched: bool = True

    @property
    def inputs_changed(self) -> bool:
        return bool(self.fresh)

    @property
    def history_changed(self) -> bool:
        return bool(self.dropped or self.added)

    def news(self, customer: str, history: list[Transition]) -> tuple[list[Transition], list[int]]:
        """What this step tells consumers about `history` (the timeline's, after the step):
        the transitions it removed (to retract, in order) and the positions of those it
        added. A transition rebuilt with the same content (so the same id) and the same
        entry into its stage is neither; one whose entry changed (an earlier entry into
        the stage came or went) is both, so consumers learn its entry."""
        prefix = Counter(t.to_stage for t in history[: self.kept])

        def entries(transitions: list[Transition]) -> dict[str, int]:
            seen, out = Counter(prefix), {}
            for t in transitions:
                seen[t.to_stage] += 1
                out[t.id(customer)] = seen[t.to_stage]
            return out

        old, new = entries(self.dropped), entries(self.added)
        gone = [t for t in self.dropped if new.get(t.id(customer)) != old[t.id(customer)]]
        published = [
            self.kept + n
            for n, t in enumerate(self.added)
            if old.get(t.id(customer)) != new[t.id(customer)]
        ]
        return gone, published


@dataclass
class Timeline:
    customer: str
    history: list[Transition] = field(default_factory=list)
    evaluated_until: int | None = None
    # The next tick the timer must evaluate (None: time alone cannot move the customer);
    # set by advance and reevaluate.
    due_at: int | None = None
    # Facts at the latest evaluation point (with datetimes), for the queryable columns.
    last_facts: dict[str, Any] | None = field(default=None, repr=False)
    # Every input folded in order. Every input is at or before the clock, so with the
    # fold an input after the clock (events arriving in order) or a timer tick is added
    # to it: the cost of an event does not grow with the customer's timeline. None: not
    # known yet (a timeline stored without it); a full replay builds it.
    folded: Accumulator | None = field(default=None, repr=False)
    # The inputs (JSON lists, in order), stored apart from the timeline: None until
    # loaded, which only a late input or a missing fold needs (see needs_inputs).
    _raw: list[list[Any]] | None = field(default_factory=list, repr=False)
    _inputs: list[Input] | None = field(default=None, repr=False)
    # Keys of the inputs, built when a late input arrives.
    _keys: set[tuple[str, str]] | None = field(default=None, repr=False)
    # Transition id -> how many times a late event retracted it after it was published:
    # a transition published again gets a new event id, which consumers do not drop as a
    # repeat of the first publication.
    retracted: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def inputs(self) -> list[Input]:
        """Every input, in (time, source, id) order."""
        if self._inputs is None:
            if self._raw is None:
                raise RuntimeError(f"the inputs of {self.customer} were not loaded")
            # Scores stored by earlier releases are not inputs any more.
            self._inputs = [Input.from_json(raw) for raw in self._raw if raw[3] != SCORE]
        return self._inputs

    def needs_inputs(self, new_inputs: list[Input]) -> bool:
        """Whether advancing with these inputs needs the stored inputs loaded: without a
        fold, or for an input at or before the clock (a late one, or a repeat)."""
        if self._raw is not None:
            return False
        until = self.evaluated_until
        return self.folded is None or (until is not None and any(i.at <= until for i in new_inputs))

    def load_inputs(self, raw: list[list[Any]]) -> None:
        self._raw = sorted(raw, key=lambda r: (r[0], r[1], r[2]))
        self._inputs = None

    @property
    def stage(self) -> str | None:
        return self.history[-1].to_stage if self.history else None

    @property
    def since(self) -> int | None:
        return self.history[-1].at if self.history else None

    def fold(self) -> Accumulator:
        """The fold of every input up to the clock (built from them if it was not stored)."""
        if self.folded is None:
            self.folded = Accumulator()
            until = self.evaluated_until
            for i in self.inputs:
                if until is not None and i.at <= until:
                    self.folded.add(i)
        return self.folded

    def to_json(self) -> dict[str, Any]:
        """History and the fold; the inputs and the clock are stored apart (the inputs
        grow, the clock changes far more often)."""
        # The fold is stored under "f" since it carries orders for the scores: a release
        # that stored it under "a" finds none and rebuilds it from the inputs.
        out: dict[str, Any] = {"h": [t.compact() for t in self.history], "f": self.fold().to_json()}
        if self.retracted:
            out["x"] = self.retracted
        return out

    @classmethod
    def from_json(cls, customer: str, raw: dict[str, Any], evaluated_until: int | None) -> Timeline:
        return cls(
            customer,
            [Transition.from_compact(t) for t in raw["h"]],
            evaluated_until,
            folded=Accumulator.from_json(raw["f"]) if "f" in raw else None,
            _raw=None,
            retracted=dict(raw.get("x", {})),
        )

    def retract(self, t: Transition) -> str:
        """Remember that a published transition was retracted; the retraction's event id."""
        tid = t.id(self.customer)
        times = self.retracted.pop(tid, 0) + 1  # re-inserted: the newest retraction is last
        self.retracted[tid] = times
        while len(self.retracted) > MAX_RETRACTIONS_KEPT:
            del self.retracted[next(iter(self.retracted))]
        return f"{tid}.x{times}"

    def publication_id(self, tid: str) -> str:
        """The event id a transition is published under (see `retracted`)."""
        n = self.retracted.get(tid, 0)
        return tid if n == 0 else f"{tid}.{n}"

    def entry(self, position: int) -> int:
        """Which entry into its stage the transition at `position` is (1 = the first)."""
        stage = self.history[position].to_stage
        return 1 + sum(1 for t in self.history[:position] if t.to_stage == stage)


def advance(
    tl: Timeline,
    model: CompiledModel,
    new_inputs: list[Input],
    clock: int | None = None,
    *,
    look_ahead: int = 0,
    quiet_until: int | None = None,
) -> Outcome:
    """Add inputs (duplicates ignored) and evaluate the timeline up to
    max(clock, the newest input, the previous clock).

    `look_ahead`: the most ticks to probe for the due time (0: the due time is the next
    tick). `quiet_until`: the stored due time when it was found under this model from the
    same inputs; the ticks before it are not evaluated again, and the probe goes twice as
    far as the span they covered."""
    until = tl.evaluated_until
    acc: Accumulator | None = None
    arrived = bool(new_inputs)
    if tl.folded is not None and (until is None or all(i.at > until for i in new_inputs)):
        # Stored inputs are all at or before the clock, so none of these can repeat one
        # (the store refuses an id reused at another time): only repeats within
        # the batch are dropped (the first kept, as below), and the fold takes them from here.
        first: dict[tuple[str, str], Input] = {}
        for i in new_inputs:
            first.setdefault(i.key, i)
        fresh = sorted(first.values(), key=lambda i: i.order)
        if tl._keys is not None:
            tl._keys.update(i.key for i in fresh)
        if tl._inputs is not None:
            tl._inputs.extend(fresh)
        elif tl._raw is not None:
            tl._raw.extend(i.to_json() for i in fresh)
        acc = tl.folded
    else:
        fresh = []
        if new_inputs:
            if tl._keys is None:
                tl._keys = {i.key for i in tl.inputs}
            keys = tl._keys
            for i in new_inputs:
                if i.key not in keys:
                    keys.add(i.key)
                    fresh.append(i)
        if fresh:
            tl.inputs.extend(fresh)
            tl.inputs.sort(key=lambda i: i.order)
    candidates = [c for c in (until, clock, *(i.at for i in fresh)) if c is not None]
    if not candidates:  # nothing to evaluate, and no clock yet
        return Outcome(len(tl.history), [], [], fresh)
    target = max(candidates)
    if not fresh and until is not None and target <= until:
        if arrived:
            return Outcome(len(tl.history), [], [], [], touched=False)
        tl.due_at = next_tick(until) if tl.fold().anchored else None
        return Outcome(len(tl.history), [], [], [])

    earliest = min((i.at for i in fresh), default=None)
    if until is not None and earliest is not None and earliest <= until:
        lo, inclusive = earliest, True  # a late input: rewind to its time
    elif until is not None:
        lo, inclusive = until, False
    else:
        lo, inclusive = None, True
    if (
        not fresh
        and until is not None
        and quiet_until is not None
        and until < quiet_until <= target
    ):
        span = (quiet_until - next_tick(until)) // TICK
        look_ahead = min(look_ahead, max(1, 2 * span))
        lo, inclusive = quiet_until - 1, False  # ticks before it were probed: no change
    keep = len(tl.history)
    if lo is not None:
        while keep and (
            tl.history[keep - 1].at >= lo if inclusive else tl.history[keep - 1].at > lo
        ):
            keep -= 1
    old_tail = tl.history[keep:]
    del tl.history[keep:]
    if acc is None:  # a late input or no fold yet: replay every input up to the target
        failures, acc = _replay(tl, model, Accumulator(), tl.inputs, lo, inclusive, target)
    else:
        failures, acc = _replay(tl, model, acc, fresh, lo, inclusive, target)
    tl.evaluated_until, tl.folded = target, acc  # acc folds every input up to the target
    tl.due_at = _due(tl, model, acc, look_ahead)
    new_tail = tl.history[keep:]
    # A replay usually rebuilds most of what it dropped: only the difference is news.
    common = 0
    while (
        common < min(len(old_tail), len(new_tail))
        and old_tail[common].compact() == new_tail[common].compact()
    ):
        common += 1
    return Outcome(keep + common, old_tail[common:], new_tail[common:], fresh, failures)


def _due(tl: Timeline, model: CompiledModel, acc: Accumulator, look_ahead: int) -> int | None:
    """The first tick after the clock whose evaluation could move the customer: probe up
    to `look_ahead` ticks with the facts as they age (no new input), and return the first
    that gives another stage or fails, else the tick after the last probed (a re-check)."""
    if not acc.anchored or tl.evaluated_until is None:
        return None
    tick = next_tick(tl.evaluated_until)
    if look_ahead > 1:
        # Shortened by up to half, by a hash of customer and tick: customers woken
        # together (all due after a backfill) drift apart instead of staying in step.
        look_ahead -= zlib.crc32(f"{tl.customer}@{tick}".encode()) % (look_ahead // 2 + 1)
    stage, since = tl.stage, tl.since
    in_stage = acc.purchases_after(since)
    for _ in range(look_ahead):
        to, failed = model.evaluate(
            acc.facts(tick), stage or "", in_stage, _scores(model, acc, tick)
        )
        if failed or (to is not None and to != stage):
            return tick
        tick += TICK
    return tick


def _replay(
    tl: Timeline,
    model: CompiledModel,
    acc: Accumulator,
    inputs: list[Input],
    lo: int | None,
    inclusive: bool,
    target: int,
) -> tuple[list[str], Accumulator]:
    """Evaluate from `lo` to `target`: `inputs` (sorted) are folded into `acc`, those in
    the range also evaluated."""
    failures: list[str] = []
    stage, since = tl.stage, tl.since

    def evaluate(at: int, cause: str, event: Input | None) -> None:
        nonlocal stage, since
        facts = acc.facts(at)
        tl.last_facts = facts
        in_stage = acc.purchases_after(since)
        to, failed = model.evaluate(facts, stage or "", in_stage, _scores(model, acc, at))
        failures.extend(failed)
        if to is not None and to != stage:
            cause_event = (event.source, event.id, event.kind) if event else None
            # The deciding facts as of this moment, scores included.
            decided = to_json(acc.with_scores(facts, at, model.served))
            tl.history.append(Transition(at, stage, to, cause, cause_event, model.version, decided))
            stage, since = to, at

    def in_range(moment: int) -> bool:
        return lo is None or moment > lo or (inclusive and moment == lo)

    tick: int | None = None
    if lo is not None:
        tick = lo if inclusive and lo % TICK == 0 else next_tick(lo)
    for i in inputs:
        if not in_range(i.at):
            acc.add(i)
            continue
        if i.at > target:
            break
        if tick is None:
            tick = next_tick(i.at)
        # Ticks at or before this input come first (a tick at the same instant sees only
        # the inputs strictly before it).
        while tick <= i.at and tick <= target:
            if acc.anchored:
                evaluate(tick, TIME, None)
                tick += TICK
            else:  # time cannot move a customer without a purchase or subscription yet
                tick = next_tick(i.at)
        acc.add(i)
        evaluate(i.at, EVENT, i)
    while tick is not None and acc.anchored and tick <= target:
        evaluate(tick, TIME, None)
        tick += TICK
    return failures, acc


def reevaluate(tl: Timeline, model: CompiledModel, clock: int, *, look_ahead: int = 0) -> Outcome:
    """Evaluate the customer under a new model as of `clock` (the time of the change);
    a different stage is a `model_change` transition."""
    at = max(clock, tl.evaluated_until or clock)
    acc = tl.fold()  # every input up to the clock
    facts = acc.facts(at)
    tl.last_facts = facts
    since = tl.since
    in_stage = acc.purchases_after(since)
    to, failed = model.evaluate(facts, tl.stage or "", in_stage, _scores(model, acc, at))
    tl.evaluated_until = at
    keep = len(tl.history)
    added: list[Transition] = []
    if to is not None and to != tl.stage:
        decided = to_json(acc.with_scores(facts, at, model.served))
        added.append(Transition(at, tl.stage, to, MODEL_CHANGE, None, model.version, decided))
        tl.history.extend(added)
    tl.due_at = _due(tl, model, acc, look_ahead)
    return Outcome(keep, [], added, [], failed)


def _scores(model: CompiledModel, acc: Accumulator, at: int) -> Scores | None:
    """The score facts the rules read, as of `at`, computed only if read."""
    if not model.used_scores:
        return None
    served = model.served
    return lambda name: acc.score_fact(name, at, served)
