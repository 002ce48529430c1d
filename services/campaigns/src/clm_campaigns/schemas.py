"""HTTP request and response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
