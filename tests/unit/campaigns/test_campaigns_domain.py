"""Pure campaign logic: conditions, templates, suppression order, quiet hours, stats."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from clm_campaigns.domain.conditions import ConditionError, compile_condition
from clm_campaigns.domain.evaluate import (
    condition_context,
    crossed,
    fires_on,
    render,
    template_context,
)
from clm_campaigns.domain.network import parse_networks, refusal
from clm_campaigns.domain.policy import (
    GlobalCap,
    PastContact,
    decide,
    holdout_bucket,
    quiet_hours_end,
    retry_delay,
)
from clm_campaigns.domain.projection import CustomerState, apply
from clm_campaigns.domain.stats import Group, summarize
from clm_campaigns.domain.templates import TemplateProblem, compile_template
from clm_campaigns.domain.triggers import OnScore, QuietHours, TriggerDefinition, compile_trigger

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CAP = GlobalCap(3, timedelta(days=1))


def definition(**changes: Any) -> TriggerDefinition:
    body: dict[str, Any] = {
        "name": "t",
        "on": {"kind": "transition", "to_stage": "at_risk"},
        "action": {"channel": "webhook", "url": "https://x.example/h", "payload": "{}"},
        **changes,
    }
    return TriggerDefinition.model_validate(body)


def test_condition_sees_facts_stage_scores_and_event() -> None:
    c = compile_condition('facts.revenue_total > 100.0 && stage == "at_risk" && scores.clv > 5.0')
    ctx = {
        "facts": {"revenue_total": 150.0},
        "stage": "at_risk",
        "scores": {"clv": 9.0},
        "event": {},
    }
    assert c.matches(ctx)
    assert not c.matches({**ctx, "stage": "active"})


def test_a_condition_over_a_null_fact_does_not_match_instead_of_failing() -> None:
    assert not compile_condition("facts.clv > 1.0").matches({"facts": {"clv": None}})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("has(scores.clv)", False),  # a field that is absent stays absent
        ("size(facts) == 3", True),  # uses of the whole map see the whole map
        ('"email" in facts && facts.email == null', True),
        ("facts[stage] == 2.0", True),
        ('event.data.plan == "pro" && facts.revenue_total > 100.0', True),
    ],
)
def test_conditions_see_what_they_name_as_with_the_whole_context(
    source: str, expected: bool
) -> None:
    ctx = {
        "facts": {"revenue_total": 150.0, "email": None, "at_risk": 2.0},
        "stage": "at_risk",
        "scores": {"churn_probability": 0.4},
        "event": {"id": "e1", "data": {"plan": "pro"}},
    }
    assert compile_condition(source).program.execute(ctx) is expected  # the reference
    assert compile_condition(source).matches(ctx) is expected


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("facts.bogus > 1", "bogus"),
        ('facts["nope"] == 1', "nope"),
        ("scores.ltv > 1.0", "ltv"),
        ("customer.x == 1", "customer"),
        ("facts.purchases_total >", "does not compile"),
    ],
)
def test_conditions_naming_unknown_things_are_refused(source: str, named: str) -> None:
    with pytest.raises(ConditionError, match=named):
        compile_condition(source)


def test_templates_cannot_reach_python_internals() -> None:
    with pytest.raises(TemplateProblem, match="internals"):
        compile_template("{{ customer.__class__ }}")
    # Built at run time, so only the sandbox can catch it: a clear error, no leak.
    t = compile_template("{{ customer|attr(event.name) }}")
    with pytest.raises(TemplateProblem, match="sandbox") as caught:
        t.render({"customer": {}, "event": {"name": "__class__"}})
    assert caught.value.security


def test_a_missing_template_field_renders_empty_or_names_its_path_when_asked() -> None:
    t = compile_template('{"email": {{ customer.traits.email | tojson }}}')
    assert t.render({"customer": {"traits": {}}}) == '{"email": null}'
    with pytest.raises(TemplateProblem, match=r"customer\.traits\.email"):
        t.render({"customer": {"traits": {}}}, missing="suppress")


def test_templates_see_jinja_globals_on_every_render() -> None:
    t = compile_template(
        "{% set ns = namespace(n=0) %}{% for p in customer.recent_purchases %}"
        "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}/{{ range(3) | list | length }}"
    )
    for purchases in ([], [{}, {}]):
        assert t.render({"customer": {"recent_purchases": purchases}}) == f"{len(purchases)}/3"


def test_validation_names_unknown_stages_and_channels() -> None:
    with pytest.raises(ValidationError) as caught:
        definition(on={"kind": "transition", "to_stage": "zombie"})
    assert caught.value.errors()[0]["loc"] == ("on", "transition", "to_stage")
    with pytest.raises(ValidationError, match="sms"):
        definition(action={"channel": "sms"})


def test_render_personalises_from_the_projection() -> None:
    trigger = compile_trigger(
        "trg_1",
        1,
        definition(
            action={
                "channel": "email",
                "subject": "Hi {{ customer.traits.name }}",
                "body": "{{ customer.stage }} {{ customer.recent_purchases[0].order_id }}",
            }
        ),
    )
    state = CustomerState("c1")
    apply(
        state,
        event_id="1",
        source="s",
        event_type="web.signed_up",
        time=NOW,
        data={"email": "ada@example.com", "name": "Ada"},
    )
    apply(
        state,
        event_id="2",
        source="s",
        event_type="purchase.completed",
        time=NOW,
        data={"order_id": "o1", "amount": "5", "currency": "EUR"},
    )
    occasion = apply(
        state,
        event_id="3",
        source="s",
        event_type="lifecycle.stage_changed",
        time=NOW,
        data={"from_stage": "active", "to_stage": "at_risk", "at": NOW.isoformat(), "facts": {}},
    )
    assert fires_on(trigger, occasion)
    rendered = render(trigger, template_context(trigger, state, occasion, "act_1"))
    assert rendered.target == {"to": "ada@example.com", "subject": "Hi Ada"}
    assert rendered.payload == "at_risk o1"
    assert condition_context(state, occasion)["facts"]["email"] == "ada@example.com"
    # A condition is given only the variables it reads, with the same values.
    full = condition_context(state, occasion)
    assert condition_context(state, occasion, ["facts", "event"]) == {
        "facts": full["facts"],
        "event": full["event"],
    }


def test_a_late_transition_fires_but_does_not_overwrite_a_newer_stage() -> None:
    state = CustomerState("c1")
    new = {"from_stage": "active", "to_stage": "loyal", "at": NOW.isoformat(), "facts": {}}
    old = {
        "from_stage": "prospect",
        "to_stage": "active",
        "at": (NOW - timedelta(days=1)).isoformat(),
    }
    apply(state, event_id="1", source="s", event_type="lifecycle.stage_changed", time=NOW, data=new)
    occasion = apply(
        state, event_id="2", source="s", event_type="lifecycle.stage_changed", time=NOW, data=old
    )
    assert state.stage == "loyal"
    assert occasion.to_stage == "active"


def test_score_triggers_fire_on_crossing_only() -> None:
    on = OnScore(kind="score", score="churn_probability", threshold=0.5, direction="above")
    assert crossed(on, 0.4, 0.6)
    assert crossed(on, None, 0.6)
    assert not crossed(on, 0.6, 0.7)
    assert not crossed(on, 0.2, 0.3)


def test_suppression_reasons_in_order() -> None:
    d = definition(cooldown_seconds=600, frequency_cap={"max": 2, "period_seconds": 3600})
    recent = [PastContact("t1", NOW - timedelta(minutes=5))]
    args: dict[str, Any] = {
        "trigger_id": "t1",
        "definition": d,
        "customer_id": "c",
        "now": NOW,
        "timezone": None,
        "global_cap": CAP,
    }
    assert decide(contacts=recent, **args).suppressed_reason == "cooldown"
    capped = [
        PastContact("t1", NOW - timedelta(minutes=20)),
        PastContact("t1", NOW - timedelta(minutes=30)),
    ]
    assert decide(contacts=capped, **args).suppressed_reason == "frequency_cap"
    others = [PastContact(f"o{i}", NOW - timedelta(hours=1)) for i in range(3)]
    assert decide(contacts=others, **args).suppressed_reason == "global_cap"
    old = [PastContact("t1", NOW - timedelta(hours=2))]
    assert decide(contacts=old, **args).status == "pending"


def test_holdout_is_deterministic_and_close_to_the_percentage() -> None:
    assert holdout_bucket("t1", "c1") == holdout_bucket("t1", "c1")
    held = sum(holdout_bucket("t1", f"c{i}") < 10 for i in range(10_000))
    assert 800 < held < 1200
    d = definition(holdout_percent=100)
    decision = decide(
        trigger_id="t1",
        definition=d,
        customer_id="c",
        contacts=[],
        now=NOW,
        timezone=None,
        global_cap=CAP,
    )
    assert (decision.status, decision.suppressed_reason) == ("held_out", "holdout")


def test_quiet_hours_hold_until_the_local_window_ends() -> None:
    quiet = QuietHours(start=time(21), end=time(8))
    berlin = ZoneInfo("Europe/Berlin")
    late = datetime(2026, 11, 20, 22, 30, tzinfo=berlin)
    assert quiet_hours_end(quiet, late, berlin) == datetime(2026, 11, 21, 8, 0, tzinfo=berlin)
    early = datetime(2026, 11, 21, 6, 0, tzinfo=berlin)
    assert quiet_hours_end(quiet, early, berlin) == datetime(2026, 11, 21, 8, 0, tzinfo=berlin)
    assert quiet_hours_end(quiet, datetime(2026, 11, 21, 12, 0, tzinfo=berlin), berlin) is None
    d = definition(quiet_hours={"start": "21:00", "end": "08:00"}, delay_seconds=60)
    decision = decide(
        trigger_id="t",
        definition=d,
        customer_id="c",
        contacts=[],
        now=late.astimezone(UTC),
        timezone="Europe/Berlin",
        global_cap=CAP,
    )
    assert (decision.status, decision.deferred_reason) == ("pending", "quiet_hours")
    assert decision.due_at == datetime(2026, 11, 21, 8, 0, tzinfo=berlin)


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert retry_delay(1, base=2, cap=60, jitter=0.0) == 1.0
    assert retry_delay(3, base=2, cap=60, jitter=0.999) == pytest.approx(8, rel=0.01)
    assert retry_delay(10, base=2, cap=60, jitter=0.0) == 30.0


def test_ssrf_rule_refuses_internal_addresses_unless_allowed() -> None:
    import ipaddress

    for addr in (
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
    ):
        assert refusal(ipaddress.ip_address(addr), []) is not None, addr
    assert refusal(ipaddress.ip_address("93.184.216.34"), []) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), parse_networks(["127.0.0.0/8"])) is None


def test_stats_add_up_and_give_the_uplift() -> None:
    s = summarize(
        {"delivered": 8, "failed": 1, "pending": 1, "suppressed": 3, "held_out": 5},
        {"cooldown": 2, "global_cap": 1},
        {"quiet_hours": 1},
        Group(8, 4),
        Group(5, 1),
    )
    assert s["matched"] == 18 and s["fired"] == 10
    assert s["uplift"]["absolute"] == pytest.approx(0.3)
    assert s["uplift"]["relative"] == pytest.approx(1.5)


def test_a_nul_character_anywhere_in_a_trigger_is_refused_naming_the_field() -> None:
    # PostgreSQL cannot store U+0000; without this check the trigger failed with a 500.
    body = {
        "name": "n",
        "on": {"kind": "transition", "to_stage": "at_risk"},
        "action": {"channel": "email", "subject": "hi", "body": "a\u0000b"},
    }
    with pytest.raises(ValidationError) as caught:
        TriggerDefinition.model_validate(body)
    assert caught.value.errors()[0]["loc"][-1] == "body"
    assert "NUL" in str(caught.value)
