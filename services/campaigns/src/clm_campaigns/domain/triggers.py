"""What marketing ops write: a trigger definition, validated and compiled.

A definition is checked as a whole on every create or update: conditions and templates
compile, stages, event types, score names and channels exist. Pydantic errors name the
field (`on.to_stage`, `condition`, `action.payload`), which the API returns as a 422.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from clm_campaigns.domain.conditions import (
    NAMED_EVENTS,
    Condition,
    ConditionError,
    compile_condition,
)
from clm_campaigns.domain.templates import Template, TemplateProblem, compile_template
from clm_events.catalog import EventType, Stage

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]{16,}")
_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")
_RESERVED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-length"}
DEFAULT_CONVERSION_WINDOW = 7 * 86_400


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text and jsonb cannot hold U+0000: refuse it here, naming the field,
        # instead of failing when the trigger is stored.
        if _has_nul(value):
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


# --- what fires a trigger -------------------------------------------------------------


class OnTransition(_Strict):
    kind: Literal["transition"]
    from_stages: list[Stage] | None = Field(
        None, description="Fire only when leaving one of these stages (any stage if omitted)."
    )
    to_stage: Stage


class OnEvent(_Strict):
    kind: Literal["event"]
    event_type: EventType

    @field_validator("event_type")
    @classmethod
    def _not_own(cls, value: EventType) -> EventType:
        if value is EventType.CAMPAIGN_ACTION_FIRED:
            raise ValueError("a trigger cannot fire on campaign actions (it would loop)")
        return value


class OnScore(_Strict):
    kind: Literal["score"]
    score: Literal["clv", "churn_probability", "p_alive", "expected_purchases"]
    threshold: float
    direction: Literal["above", "below"] = Field(
        "above", description="above: fires when the score reaches the threshold from below."
    )


class OnSegment(_Strict):
    """Entering or leaving a segment: a change of live membership caused by a consumed
    event (not by recomputing an edited segment, which messages nobody)."""

    kind: Literal["entered_segment", "left_segment"]
    segment_id: Annotated[str, Field(min_length=1, max_length=64)]


On = Annotated[OnTransition | OnEvent | OnScore | OnSegment, Field(discriminator="kind")]


# --- what it does ---------------------------------------------------------------------


def _template(value: str) -> str:
    try:
        compile_template(value)
    except TemplateProblem as exc:
        raise ValueError(str(exc)) from exc
    return value


class WebhookAction(_Strict):
    channel: Literal["webhook"]
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    payload: str = Field(description="Jinja2 template of the request body.")
    content_type: str = "application/json"
    headers: dict[str, str] = Field(default_factory=dict)
    secret: str | None = Field(
        None, description="Standard Webhooks secret (whsec_...); generated when omitted."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("url must be an absolute http or https URL")
        if parts.username or parts.password:
            raise ValueError("url must not carry credentials; use headers or the signature")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str) -> str:
        return _template(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _HEADER.fullmatch(name):
                raise ValueError(f"invalid header name '{name[:64]}'")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header '{name}' is set by the signer")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET.fullmatch(value):
            raise ValueError("secret must be 'whsec_' followed by base64 (at least 16 chars)")
        return value


class EmailAction(_Strict):
    channel: Literal["email"]
    to: str = Field("{{ customer.traits.email }}", description="Template of the recipient.")
    subject: str
    body: str

    @field_validator("to", "subject", "body")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _template(value)


class KafkaAction(_Strict):
    channel: Literal["kafka"]
    topic: str
    payload: str

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _TOPIC.fullmatch(value) or value in {".", ".."}:
            raise ValueError("topic must be 1-249 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str) -> str:
        return _template(value)


Action = Annotated[WebhookAction | EmailAction | KafkaAction, Field(discriminator="channel")]


# --- suppression ----------------------------------------------------------------------


class FrequencyCap(_Strict):
    max: int = Field(ge=1, description="At most this many actions of the trigger...")
    period_seconds: int = Field(ge=1, description="...per customer within this period.")


class QuietHours(_Strict):
    start: time = Field(description="Local time the quiet window starts, e.g. 21:00.")
    end: time = Field(description="Local time it ends, e.g. 08:00 (next day if before start).")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self


class Reentry(_Strict):
    """How often one customer may be acted on by this trigger. An entry is one stay in
    the trigger's stage (a transition a late event rewrote and a replay re-created is the
    same entry), or one causing event or score crossing for other triggers."""

    mode: Literal["every_time", "once", "once_per"] = Field(
        "every_time",
        description="every_time: each entry once; once: one entry per customer ever; "
        "once_per: at most one entry within period_seconds of another (by event time).",
    )
    period_seconds: int | None = Field(None, ge=60, le=10 * 365 * 86_400)

    @model_validator(mode="after")
    def _period(self) -> Reentry:
        if (self.mode == "once_per") != (self.period_seconds is not None):
            raise ValueError("period_seconds is required with once_per, and only with it")
        return self


class Recheck(_Strict):
    """What is checked again when the action is about to be sent (after a delay or
    quiet hours, or at once): exit criteria. Each failed check suppresses the action with
    its reason."""

    transition: bool = Field(
        True, description="retracted: a late event rewrote the causing transition away."
    )
    condition: bool = Field(
        True, description="condition_no_longer_holds: the condition is false on current state."
    )
    stage: bool = Field(
        False, description="left_stage: the customer is no longer in the trigger's stage."
    )
    segment: bool = Field(
        True,
        description="left_segment: an entered_segment trigger's customer is no longer in "
        "it; back_in_segment: a left_segment trigger's customer is in it again.",
    )


DEFAULT_MAX_AGE = 86_400


class TriggerDefinition(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=2000)] = ""
    on: On
    condition: str = Field("true", description="CEL over facts, stage, scores and event.")
    action: Action
    delay_seconds: int = Field(0, ge=0, le=90 * 86_400)
    frequency_cap: FrequencyCap | None = None
    cooldown_seconds: int = Field(0, ge=0, le=365 * 86_400)
    quiet_hours: QuietHours | None = None
    holdout_percent: float = Field(0, ge=0, le=100)
    transactional: bool = Field(
        False,
        description="A receipt, a password reset: exempt from the global cap and not counted "
        "by it (its own frequency cap and cooldown still apply).",
    )
    conversion_window_seconds: int = Field(DEFAULT_CONVERSION_WINDOW, ge=60, le=365 * 86_400)
    reentry: Reentry = Field(default_factory=Reentry)
    max_age_seconds: int | None = Field(
        DEFAULT_MAX_AGE,
        ge=60,
        le=10 * 365 * 86_400,
        description="An occasion older than this when it is processed (a history import, a "
        "very late event) is suppressed as stale; null: no limit.",
    )
    recheck: Recheck = Field(default_factory=Recheck)
    missing_variables: Literal["empty", "suppress"] = Field(
        "empty",
        description="A template value the customer does not have: rendered empty (null "
        "through tojson), or the action is suppressed as missing_variable.",
    )

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str, info: ValidationInfo) -> str:
        try:
            condition = compile_condition(value, check_types=not _stored(info))
        except ConditionError as exc:
            raise ValueError(str(exc)) from exc
        on, fields = info.data.get("on"), condition.reads.get("event") or frozenset()
        named = isinstance(on, OnEvent) and on.event_type.value in NAMED_EVENTS
        for field in sorted(fields & {"name", "properties"}):
            if not named and not _stored(info):
                raise ValueError(
                    f"event.{field}: only {' and '.join(NAMED_EVENTS)} events have a "
                    f"{field}; this trigger fires on {_occasion(on)}"
                )
        return value


def _occasion(on: Any) -> str:
    if isinstance(on, OnEvent):
        return f"{on.event_type.value} events"
    return f"{on.kind}s" if on is not None else "an invalid occasion"


STORED = {"stored": True}  # validation context of a definition read back from the database


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


# --- compiled, ready to evaluate ------------------------------------------------------


@dataclass(frozen=True)
class CompiledTrigger:
    """One trigger version with its condition and templates compiled (cache by id+version)."""

    id: str
    version: int
    definition: TriggerDefinition
    condition: Condition
    templates: dict[str, Template]  # action field name -> template

    @property
    def channel(self) -> str:
        return self.definition.action.channel


def compile_trigger(
    trigger_id: str, version: int, definition: TriggerDefinition
) -> CompiledTrigger:
    action = definition.action
    fields: dict[str, str]
    if isinstance(action, WebhookAction):
        fields = {"payload": action.payload}
    elif isinstance(action, EmailAction):
        fields = {"to": action.to, "subject": action.subject, "body": action.body}
    else:
        fields = {"payload": action.payload}
    return CompiledTrigger(
        id=trigger_id,
        version=version,
        definition=definition,
        condition=compile_condition(definition.condition, check_types=False),
        templates={name: compile_template(src) for name, src in fields.items()},
    )


def literal_address(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a URL names literally, if it does (hostnames resolve at send time)."""
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def definition_json(definition: TriggerDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json")
