"""HTTP request and response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clm_campaigns.domain.conditions import ConditionError
from clm_campaigns.domain.segments import compile_segment_condition
from clm_campaigns.domain.triggers import TriggerDefinition

ActionStatus = Literal["pending", "sending", "delivered", "failed", "suppressed", "held_out"]


class TriggerIn(TriggerDefinition):
    enabled: bool = True

    def definition(self) -> TriggerDefinition:
        return TriggerDefinition.model_validate(self.model_dump(exclude={"enabled"}))


class TriggerOut(BaseModel):
    id: str
    version: int
    enabled: bool
    created_at: datetime
    updated_at: datetime
    updated_by: str = Field(description="Id of the API key that made the latest change.")
    definition: dict[str, Any] = Field(description="The trigger; webhook secrets are masked.")
    secret: str | None = Field(
        None, description="A generated webhook secret, shown once in the response that made it."
    )


class TriggerVersion(BaseModel):
    version: int
    change: str
    enabled: bool
    changed_by: str
    changed_at: datetime
    definition: dict[str, Any]


class PreviewEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=100)
    data: dict[str, Any] = Field(default_factory=dict)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1, max_length=256)
    event: PreviewEvent | None = Field(
        None, description="The causing event as templates see it (a sample one if omitted)."
    )


class DraftPreviewIn(PreviewIn):
    definition: dict[str, Any] = Field(description="A trigger as POST /v1/triggers takes it.")


class PreviewOut(BaseModel):
    trigger_id: str | None = Field(description="None when a draft was previewed.")
    customer_id: str
    channel: str
    condition_matches: bool
    target: dict[str, Any]
    payload: str
    payload_json: Any = None
    missing: list[str] = Field(
        default_factory=list,
        description="Template values this customer does not have: rendered empty, or the "
        "action suppressed as missing_variable, as the trigger's missing_variables says.",
    )


class ActionOut(BaseModel):
    id: str
    trigger_id: str
    trigger_version: int
    customer_id: str
    channel: str
    status: ActionStatus
    suppressed_reason: str | None
    deferred_reason: str | None
    target: dict[str, Any]
    payload: str | None
    cause_event: str
    cause_time: datetime
    created_at: datetime
    due_at: datetime
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    converted_at: datetime | None
    entry_key: str | None = Field(
        None, description="The customer entry the action is for (re-entry control)."
    )


class SegmentIn(BaseModel):
    """A segment; its condition is type-checked here (a 422 names `condition`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    condition: str = Field(
        description="CEL over stage, facts, scores (with rfm_*) and traits; no event."
    )

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str) -> str:
        try:
            compile_segment_condition(value)
        except ConditionError as exc:
            raise ValueError(str(exc)) from exc
        return value


class EstimateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: str

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str) -> str:
        return SegmentIn._condition(value)


class Recomputation(BaseModel):
    version: int
    done: int
    total: int | None
    finished_at: datetime | None


class SegmentOut(BaseModel):
    id: str
    version: int
    name: str
    description: str
    condition: str
    created_at: datetime
    updated_at: datetime
    updated_by: str = Field(description="Id of the API key that made the latest change.")
    size: int = Field(description="Members now.")
    recompute: Recomputation | None = Field(
        None, description="The background recomputation of the latest version's members."
    )


class SegmentVersion(BaseModel):
    version: int
    change: str
    name: str
    description: str
    condition: str
    changed_by: str
    changed_at: datetime
