"""What marketing ops write for a multi-step campaign: a journey definition, validated and
compiled, and the step rules the journey runner follows (no I/O here).

A journey has an entry (what starts a customer on it), exit criteria (checked before every
step), re-entry control and a list of steps. Steps run top to bottom; a step may jump, but
only forward (`next`, a branch's `then`/`else`, a split arm's `next`), so every run ends.
A send step is a one-step trigger underneath: the same action, caps, quiet hours and
dispatcher as a trigger's, under the id `<journey>/<step>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from clm_campaigns.domain.conditions import Condition, ConditionError, compile_condition
from clm_campaigns.domain.policy import holdout_bucket, zone
from clm_campaigns.domain.triggers import (
    DEFAULT_CONVERSION_WINDOW,
    STORED,
    Action,
    CompiledTrigger,
    FrequencyCap,
    OnEvent,
    OnSegment,
    OnTransition,
    QuietHours,
    Recheck,
    Reentry,
    TriggerDefinition,
    _stored,
    _Strict,
    compile_trigger,
)
from clm_events.catalog import EventType

_NAME = r"^[a-z][a-z0-9_]{0,39}$"  # anchored: a Field pattern matches anywhere otherwise
StepId = Annotated[str, Field(pattern=_NAME, description="Lowercase letters, digits, _.")]
MAX_STEPS = 100


def _condition(value: str, info: ValidationInfo) -> str:
    try:
        compile_condition(value, check_types=not _stored(info))
    except ConditionError as exc:
        raise ValueError(str(exc)) from exc
    return value


# --- steps ----------------------------------------------------------------------------


class SendStep(_Strict):
    id: StepId
    type: Literal["send"]
    action: Action
    transactional: bool = Field(
        False, description="Receipts and the like: exempt from the global cap."
    )
    frequency_cap: FrequencyCap | None = None
    cooldown_seconds: int = Field(0, ge=0, le=365 * 86_400)
    quiet_hours: QuietHours | None = None
    missing_variables: Literal["empty", "suppress"] = "empty"
    next: StepId | None = Field(None, description="The step after; the following one if omitted.")


class WaitStep(_Strict):
    """A duration, or until a local time of day in the customer's time zone."""

    id: StepId
    type: Literal["wait"]
    seconds: int | None = Field(None, ge=1, le=365 * 86_400)
    until: time | None = Field(None, description="Local time of day, e.g. 09:00.")
    next: StepId | None = None

    @model_validator(mode="after")
    def _one(self) -> WaitStep:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("a wait needs exactly one of seconds and until")
        return self


class WaitForStep(_Strict):
    """Until the customer has an event of this type, at most timeout_seconds: each outcome
    has its branch (the following step if omitted)."""

    id: StepId
    type: Literal["wait_for"]
    event: EventType
    timeout_seconds: int = Field(ge=60, le=365 * 86_400)
    on_event: StepId | None = None
    on_timeout: StepId | None = None


class BranchStep(_Strict):
    """A condition on the customer's current state (as when the step runs)."""

    id: StepId
    type: Literal["branch"]
    condition: str
    then: StepId | None = None
    otherwise: StepId | None = Field(None, alias="else")

    _check = field_validator("condition")(_condition)


class Arm(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    percent: float = Field(gt=0, le=100)
    next: StepId | None = None
    holdout: bool = Field(False, description="Customers in this arm get nothing: they exit.")


class SplitStep(_Strict):
    """A/B/n by percentage. A customer's arm is a hash of journey and customer: the same
    on every re-entry, replica and restart."""

    id: StepId
    type: Literal["split"]
    arms: list[Arm] = Field(min_length=2, max_length=10)

    @model_validator(mode="after")
    def _arms(self) -> SplitStep:
        if abs(sum(a.percent for a in self.arms) - 100) > 1e-9:
            raise ValueError("the arms' percentages must add up to 100")
        if len({a.name for a in self.arms}) != len(self.arms):
            raise ValueError("arm names must be unique")
        return self


class ExitStep(_Strict):
    id: StepId
    type: Literal["exit"]


Step = Annotated[
    SendStep | WaitStep | WaitForStep | BranchStep | SplitStep | ExitStep,
    Field(discriminator="type"),
]


# --- the journey ----------------------------------------------------------------------


class Entry(_Strict):
    on: Annotated[OnTransition | OnEvent | OnSegment, Field(discriminator="kind")]
    condition: str = Field("true", description="CEL over the customer and the event.")

    _check = field_validator("condition")(_condition)


class Exit(_Strict):
    """Checked before every step: a customer for whom the condition holds, or who had one
    of these events since entering, leaves the journey."""

    condition: str | None = None
    events: list[EventType] = Field(default_factory=list, max_length=20)

    @field_validator("condition")
    @classmethod
    def _check(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _condition(value, info)


class JourneyDefinition(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=2000)] = ""
    entry: Entry
    exit: Exit = Field(default_factory=Exit)
    reentry: Reentry = Field(default_factory=Reentry)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    conversion_event: EventType = EventType.PURCHASE_COMPLETED
    conversion_window_seconds: int = Field(DEFAULT_CONVERSION_WINDOW, ge=60, le=365 * 86_400)
    max_age_seconds: int | None = Field(
        86_400, ge=60, le=10 * 365 * 86_400, description="Older occasions enter nobody."
    )

    @model_validator(mode="after")
    def _graph(self) -> JourneyDefinition:
        position: dict[str, int] = {}
        for k, step in enumerate(self.steps):
            if step.id in position:
                raise ValueError(f"steps[{k}].id: '{step.id}' is used twice")
            position[step.id] = k
        for k, step in enumerate(self.steps):
            for field, target in jumps(step):
                if target is None:
                    continue
                if target not in position:
                    raise ValueError(f"steps[{k}].{field}: no step '{target}'")
                if position[target] <= k:
                    raise ValueError(
                        f"steps[{k}].{field}: '{target}' is not after '{step.id}'; "
                        "steps only jump forward, so every customer's run ends"
                    )
        return self


def jumps(step: Any) -> list[tuple[str, str | None]]:
    """(field, target) of every jump a step can make (None: the following step)."""
    if isinstance(step, BranchStep):
        return [("then", step.then), ("else", step.otherwise)]
    if isinstance(step, WaitForStep):
        return [("on_event", step.on_event), ("on_timeout", step.on_timeout)]
    if isinstance(step, SplitStep):
        return [(f"arms[{i}].next", a.next) for i, a in enumerate(step.arms)]
    if isinstance(step, ExitStep):
        return []
    return [("next", step.next)]


# --- compiled, ready to run -----------------------------------------------------------


@dataclass(frozen=True)
class CompiledJourney:
    id: str
    version: int
    definition: JourneyDefinition
    entry: CompiledTrigger  # its `on` and condition, as triggers match an occasion
    exit_condition: Condition | None
    branches: dict[str, Condition]  # step id -> condition
    sends: dict[str, CompiledTrigger]  # step id -> its one-step trigger
    steps: dict[str, Any]  # step id -> step
    following: dict[str, str | None]  # step id -> the next one in the list

    @property
    def first(self) -> str:
        return self.definition.steps[0].id

    @property
    def waits_for(self) -> list[EventType]:
        return [s.event for s in self.definition.steps if isinstance(s, WaitForStep)]

    def after(self, step_id: str, target: str | None) -> str | None:
        """Where a step leads: its jump target, else the following step (None: the end)."""
        return target if target is not None else self.following[step_id]


def send_trigger_id(journey_id: str, step_id: str) -> str:
    return f"{journey_id}/{step_id}"


def _send_definition(journey: JourneyDefinition, step: SendStep) -> TriggerDefinition:
    return TriggerDefinition.model_validate(
        {
            "name": f"{journey.name}: {step.id}",
            "on": journey.entry.on.model_dump(mode="json"),
            "action": step.action.model_dump(mode="json"),
            "frequency_cap": step.frequency_cap and step.frequency_cap.model_dump(mode="json"),
            "cooldown_seconds": step.cooldown_seconds,
            "quiet_hours": step.quiet_hours and step.quiet_hours.model_dump(mode="json"),
            "conversion_window_seconds": journey.conversion_window_seconds,
            "max_age_seconds": None,  # the journey's entry was checked for age
            "missing_variables": step.missing_variables,
            "transactional": step.transactional,
            # Exit criteria are the journey's, checked before the step; at send time only
            # a retracted cause stops it.
            "recheck": Recheck(condition=False, segment=False).model_dump(mode="json"),
        },
        context=STORED,
    )


def compile_journey(
    journey_id: str, version: int, definition: JourneyDefinition
) -> CompiledJourney:
    steps = definition.steps
    entry = TriggerDefinition.model_validate(
        {
            "name": definition.name,
            "on": definition.entry.on.model_dump(mode="json"),
            "condition": definition.entry.condition,
            "action": {"channel": "kafka", "topic": "unused", "payload": ""},
            "reentry": definition.reentry.model_dump(mode="json"),
            "max_age_seconds": definition.max_age_seconds,
        },
        context=STORED,
    )
    return CompiledJourney(
        id=journey_id,
        version=version,
        definition=definition,
        entry=compile_trigger(journey_id, version, entry),
        exit_condition=(
            compile_condition(definition.exit.condition, check_types=False)
            if definition.exit.condition
            else None
        ),
        branches={
            s.id: compile_condition(s.condition, check_types=False)
            for s in steps
            if isinstance(s, BranchStep)
        },
        sends={
            s.id: compile_trigger(
                send_trigger_id(journey_id, s.id), version, _send_definition(definition, s)
            )
            for s in steps
            if isinstance(s, SendStep)
        },
        steps={s.id: s for s in steps},
        following={
            s.id: (steps[k + 1].id if k + 1 < len(steps) else None) for k, s in enumerate(steps)
        },
    )


def arm_of(journey_id: str, customer_id: str, split: SplitStep) -> Arm:
    """The customer's arm: sticky (a hash, not a draw), so re-entry cannot re-roll it."""
    bucket, edge = holdout_bucket(f"{journey_id}\x00{split.id}", customer_id), 0.0
    for arm in split.arms:
        edge += arm.percent
        if bucket < edge:
            return arm
    return split.arms[-1]


def wait_until(step: WaitStep, now: datetime, timezone: str | None, default: str) -> datetime:
    """When a wait step ends for a customer reaching it at `now`."""
    if step.seconds is not None:
        return now + timedelta(seconds=step.seconds)
    assert step.until is not None
    tz = zone(timezone, default)
    local = now.astimezone(tz)
    at = datetime.combine(local.date(), step.until.replace(tzinfo=None), tzinfo=tz)
    if at <= local:
        at = datetime.combine(local.date() + timedelta(days=1), step.until, tzinfo=tz)
    return at.astimezone(now.tzinfo)


def definition_json(definition: JourneyDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", by_alias=True)
