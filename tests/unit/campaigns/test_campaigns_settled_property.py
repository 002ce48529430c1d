"""A message to a customer is irreversible: it must follow the settled history, not a
transient state. Random event sets arrive in random batches and orders, with timer sweeps,
lagging consumption and sends interleaved at random; the stage engine's and campaigns' own
domain code decide what is published and what is sent. Whatever the arrival:

- no two delivered actions for the same trigger and customer entry;
- no delivered action whose transition no longer stood when it was sent;
- every entry of the final history into the trigger's stage got exactly one message.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clm_campaigns.domain.evaluate import still_sendable
from clm_campaigns.domain.policy import GlobalCap
from clm_campaigns.domain.projection import CustomerState
from clm_campaigns.domain.triggers import TriggerDefinition, compile_trigger
from clm_campaigns.handlers import Campaigns, TriggerCache
from clm_campaigns.repository import ENTRY_STATUSES, Entry
from clm_events.envelope import Event, parse_structured
from clm_stage_engine.domain.inputs import Input, to_us
from clm_stage_engine.domain.model import DEFAULT_MODEL, compile_model
from clm_stage_engine.domain.timeline import Timeline, advance
from clm_stage_engine.outbound import publications

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
MODEL = compile_model(DEFAULT_MODEL, 1)
STAGES = ("onboarding", "active", "at_risk", "lapsed", "won_back")
KINDS = [
    ("purchase.completed", {"amount": 25.0}),
    ("purchase.completed", {"amount": 25.0}),
    ("billing.payment_failed", {"invoice": "inv-1"}),
    ("billing.invoice_paid", {"invoice": "inv-1", "amount": 9.0}),
    (
        "lifecycle.score_updated",
        {"clv": 150.0, "churn_probability": 0.7, "p_alive": 0.3, "expected_purchases": 0.2},
    ),
]


def _trigger(stage: str, delay: int) -> Any:
    definition = TriggerDefinition.model_validate(
        {
            "name": f"to {stage}",
            "on": {"kind": "transition", "to_stage": stage},
            "action": {"channel": "kafka", "topic": "t", "payload": "{{ customer.id }}"},
            "delay_seconds": delay,
            "max_age_seconds": None,  # the simulated history is old: act on it all the same
        }
    )
    return compile_trigger(f"trg-{stage}", 1, definition)


@dataclass
class World:
    """The stage engine's timelines, the transitions topic, campaigns' tables, a clock."""

    campaigns: Campaigns
    triggers: list[Any]
    timelines: dict[str, Timeline] = field(default_factory=dict)
    topic: deque[Event] = field(default_factory=deque)
    states: dict[str, CustomerState] = field(default_factory=dict)
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    standing: dict[str, bool] = field(default_factory=dict)  # cause -> as campaigns saw it
    sent: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def stage_engine(self, customer: str, inputs: list[Input], clock: int | None) -> None:
        tl = self.timelines.setdefault(customer, Timeline(customer))
        out = advance(tl, MODEL, inputs, clock)
        for _, value in publications(tl, out, None):
            self.topic.append(parse_structured(value))

    def consume(self, n: int, *, dispatch_meanwhile: bool = False) -> None:
        """One consumed batch, as the handler runs it: suppress earlier pending actions of
        the transitions it retracts, read the entries, decide, insert; the dispatcher may
        claim and send earlier actions while the batch is being decided."""
        batch = [self.topic.popleft() for _ in range(min(n, len(self.topic)))]
        if not batch:
            return
        retracting = {
            f"{e.source}/{e.data.transition_id}"  # type: ignore[union-attr]
            for e in batch
            if e.type == "lifecycle.transition_retracted"
        }
        for a in self.actions.values():
            if a["status"] == "pending" and a["cause_event"] in retracting:
                a.update(status="suppressed", suppressed_reason="retracted")
        acted: dict[str, list[Entry]] = {}
        for a in self.actions.values():
            if a["status"] in ENTRY_STATUSES:
                entry = Entry(
                    a["trigger_id"], a["entry_key"], a["cause_time"], a["cause_event"], a["status"]
                )
                acted.setdefault(a["customer_id"], []).append(entry)
        if dispatch_meanwhile:
            self.dispatch()
        decided = self.campaigns.decide(batch, self.states, self.triggers, {}, acted, self.now)
        for e in batch:
            cause = f"{e.source}/{e.data.transition_id}"  # type: ignore[union-attr]
            self.standing[cause] = e.type == "lifecycle.stage_changed"
        self.actions |= {r["id"]: r for r in decided.rows}

    def dispatch(self) -> None:
        for a in sorted(self.actions.values(), key=lambda a: a["due_at"]):
            if a["status"] != "pending" or a["due_at"] > self.now:
                continue
            trigger = next(t for t in self.triggers if t.id == a["trigger_id"])
            state = self.states.get(a["customer_id"])
            if still_sendable(trigger, enabled=True, state=state, occasion=None) is None:
                a["status"] = "delivered"
                self.sent.append({**a, "stood": self.standing.get(a["cause_event"], False)})

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


_input = st.builds(
    lambda n, day, kind: Input(
        to_us(T0 + day * DAY), "shop", f"e{n}", KINDS[kind][0], dict(KINDS[kind][1])
    ),
    st.integers(0, 10_000),
    st.integers(0, 150).map(float),
    st.integers(0, len(KINDS) - 1),
)


@settings(max_examples=150, deadline=None)
@given(
    inputs=st.lists(_input, min_size=1, max_size=20, unique_by=lambda i: i.id),
    delays=st.tuples(*(st.sampled_from([0, 0, 30, 600]) for _ in STAGES)),
    data=st.data(),
)
def test_messages_follow_the_settled_history_whatever_the_arrival(
    inputs: list[Input], delays: tuple[int, ...], data: st.DataObject
) -> None:
    triggers = [_trigger(stage, delay) for stage, delay in zip(STAGES, delays, strict=True)]
    world = World(Campaigns(TriggerCache(), "actions", GlobalCap(10**6, DAY), "UTC"), triggers)
    customers = ["c-1", "c-2"]
    owner = {i.id: customers[int(i.id[1:]) % 2] for i in inputs}
    arrivals = data.draw(st.permutations(inputs))
    pos = 0
    while pos < len(arrivals):
        size = data.draw(st.integers(1, 3))
        batch = arrivals[pos : pos + size]
        pos += size
        for c in customers:
            mine = [i for i in batch if owner[i.id] == c]
            if mine:
                world.stage_engine(c, mine, None)
        for _ in range(data.draw(st.integers(0, 3))):
            step = data.draw(st.sampled_from(["timer", "consume", "dispatch", "wait"]))
            if step == "timer":
                clock = (
                    max(i.at for i in arrivals[:pos])
                    + data.draw(st.integers(0, 60)) * 86_400_000_000
                )
                for c in customers:
                    if c in world.timelines:
                        world.stage_engine(c, [], clock)
            elif step == "consume":
                world.consume(
                    data.draw(st.integers(1, 6)), dispatch_meanwhile=data.draw(st.booleans())
                )
            elif step == "dispatch":
                world.dispatch()
            else:
                world.tick(data.draw(st.sampled_from([1, 60, 900])))
    # Settle: the timer brings everyone to the end, everything is consumed and sent.
    end = to_us(T0 + 250 * DAY)
    for c in world.timelines:
        world.stage_engine(c, [], end)
    world.consume(10**6)
    world.tick(3600)
    world.dispatch()

    keys = [(a["trigger_id"], a["customer_id"], a["entry_key"]) for a in world.sent]
    assert len(keys) == len(set(keys)), "two messages for one customer entry"
    assert all(a["stood"] for a in world.sent), "a message for a transition no longer standing"
    final = set()
    for c, tl in world.timelines.items():
        for position, t in enumerate(tl.history):
            if t.to_stage in STAGES:
                final.add((f"trg-{t.to_stage}", c, f"{t.to_stage}#{tl.entry(position)}"))
    assert final <= set(keys), f"entries of the final history never acted on: {final - set(keys)}"
