"""The lifecycle model as data: stages and ordered rules whose conditions are CEL.

Rules are tried in order; the first whose `from` admits the current stage and whose
`when` holds names the stage the customer moves to. No match: the stage stays.
The whole rule list is compiled once per model version into one CEL program (a chain of
conditionals), so evaluating a customer is one call into the CEL runtime.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cel

from clm_events.catalog import Stage
from clm_events.facts import FACTS
from clm_events.rfm import RFM_FACTS
from clm_events.scoremodel import ServedModel
from clm_stage_engine.domain.facts import SCORE_FACTS

# Variables a rule may name besides the facts: the customer's current stage ("" before
# the first classification) and the purchases made since they entered it.
CONTEXT: dict[str, tuple[str, str]] = {
    "stage": ("string", "the current stage, '' before the first classification"),
    "purchases_in_stage": ("int", "purchases since the customer entered the current stage"),
}
# RFM is the stage engine's own for now (the served cut points reach only it).
VARIABLES: dict[str, tuple[str, str]] = {**FACTS, **RFM_FACTS, **CONTEXT}

MAX_RULES = 100
MAX_EXPRESSION = 2000
_KEYWORDS = {"true", "false", "null", "in"}
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"(?<![.\w])([A-Za-z_]\w*)(?!\w)(?!\s*\()")
_MACRO_VARIABLE = re.compile(r"\.\s*\w+\s*\(\s*([A-Za-z_]\w*)\s*,")
_STAGE_LITERALS = re.compile(
    r"\bstage\s*(?:[!=]=\s*(?P<one>'[^']*'|\"[^\"]*\")|in\s*\[(?P<many>[^\]]*)\])"
)


class ModelError(ValueError):
    """The model is invalid; `errors` are (path, reason) pairs for the 422 body."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {r}" for p, r in errors))


@dataclass(frozen=True)
class Rule:
    name: str
    to: str
    when: str
    from_stages: tuple[str, ...] | None = None  # None: from any stage

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "to": self.to, "when": self.when}
        if self.from_stages is not None:
            out["from"] = list(self.from_stages)
        return out


@dataclass(frozen=True)
class ModelSpec:
    stages: tuple[str, ...]
    rules: tuple[Rule, ...]

    def to_json(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "rules": [r.to_json() for r in self.rules]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelSpec:
        return cls(
            stages=tuple(raw["stages"]),
            rules=tuple(
                Rule(
                    name=r["name"],
                    to=r["to"],
                    when=r["when"],
                    from_stages=tuple(r["from"]) if r.get("from") is not None else None,
                )
                for r in raw["rules"]
            ),
        )


def _literal(text: str) -> str:
    return str(json.loads('"' + text[1:-1].replace('"', '\\"') + '"'))


def _names(expr: str) -> list[str]:
    """Identifiers an expression reads (not functions, fields, literals or macro variables)."""
    stripped = _STRING.sub('""', expr)
    bound = set(_MACRO_VARIABLE.findall(stripped))
    names = dict.fromkeys(_IDENTIFIER.findall(stripped))
    return [n for n in names if n not in _KEYWORDS and n not in bound]


def _unknown_names(expr: str) -> list[str]:
    return [n for n in _names(expr) if n not in VARIABLES]


def _stage_literals(expr: str) -> list[str]:
    found: list[str] = []
    for m in _STAGE_LITERALS.finditer(expr):
        if m["one"]:
            found.append(_literal(m["one"]))
        else:
            found += [_literal(s) for s in _STRING.findall(m["many"] or "")]
    return found


_SAMPLE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
_SAMPLE_VALUES = {
    "timestamp?": _SAMPLE_TIME,
    "int": 1,
    "int?": 1,
    "double": 1.0,
    "double?": 1.0,
    "string": "",
    "string?": "x",
    "map": {},
}


def _samples(stages: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Activations every rule must evaluate on without error: one with every optional
    fact null (a brand-new customer), one with every fact present."""
    full = {name: _SAMPLE_VALUES[kind] for name, (kind, _) in VARIABLES.items()}
    zero: dict[str, Any] = {"int": 0, "double": 0.0, "string": "", "map": {}}
    empty = {
        name: None if kind.endswith("?") else zero[kind] for name, (kind, _) in VARIABLES.items()
    }
    full["stage"] = empty["stage"] = stages[0] if stages else ""
    return [("every optional fact is null", empty), ("every fact is present", full)]


Scores = Callable[[str], Any]  # score fact name -> its value for this evaluation


class _Values(dict[str, Any]):
    """One evaluation's variables; a score fact is computed when first read."""

    scores: Scores | None = None

    def __missing__(self, name: str) -> Any:
        if name in SCORE_FACTS and self.scores is not None:
            value = self[name] = self.scores(name)
            return value
        return None


@dataclass
class CompiledModel:
    """A lifecycle model version: the rules, compiled, and the score model scoring served
    when the version was made (a new served score model makes a new version)."""

    version: int
    spec: ModelSpec
    _chain: Any = field(repr=False)
    _rules: list[Any] = field(repr=False)
    # Only the variables the rules name are handed to CEL: converting values (times
    # above all) into the CEL runtime is most of an evaluation's cost.
    used: tuple[str, ...] = ()
    served: ServedModel | None = None
    used_facts: tuple[str, ...] = field(init=False)
    used_scores: tuple[str, ...] = field(init=False)
    uses_purchases_in_stage: bool = field(init=False)
    _values: _Values = field(init=False, repr=False)
    _context: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.used_scores = tuple(n for n in self.used if n in SCORE_FACTS)
        self.used_facts = tuple(
            n for n in self.used if n not in CONTEXT and n not in self.used_scores
        )
        self.uses_purchases_in_stage = "purchases_in_stage" in self.used
        # Values reach the chain through a resolver, so the runtime converts only the
        # variables an evaluation reads (short-circuits skip the rest): about a third
        # cheaper than a dict of them all. A None from the resolver falls through to the
        # variable registered here as null. Scores are computed only when read.
        self._values = _Values()
        self._context = cel.Context()
        for name in self.used:
            self._context.add_variable(name, None)
        # The dict's own lookup (C) for every variable; only a score not computed yet
        # for this evaluation calls back into Python (_Values.__missing__).
        self._context.set_variable_resolver(
            self._values.__getitem__ if self.used_scores else self._values.get
        )

    def evaluate(
        self,
        facts: dict[str, Any],
        stage: str,
        purchases_in_stage: int,
        scores: Scores | None = None,
    ) -> tuple[str | None, list[str]]:
        """(target stage or None, names of rules that failed to evaluate) for a customer
        with these facts, in `stage` ("" before the first); `scores` gives the score
        facts the rules read, as of the same moment."""
        values = self._values
        values.clear()
        for name in self.used_facts:
            values[name] = facts[name]
        values["stage"] = stage
        if self.uses_purchases_in_stage:
            values["purchases_in_stage"] = purchases_in_stage
        values.scores = scores
        try:
            target = self._chain.execute(self._context)
            return (target or None), []
        except (LookupError, RuntimeError, TypeError, ValueError):
            pass
        finally:
            values.scores = None
        # One rule failed on this customer's facts: evaluate rule by rule, count the
        # failing ones as not matching, and report them (metrics, logs).
        activation = dict(values)
        for name in self.used_scores:
            activation[name] = scores(name) if scores is not None else None
        failed: list[str] = []
        for rule, program in zip(self.spec.rules, self._rules, strict=True):
            if rule.from_stages is not None and activation.get("stage") not in rule.from_stages:
                continue
            try:
                if program.execute(activation) is True:
                    return rule.to, failed
            except (LookupError, RuntimeError, TypeError, ValueError):
                failed.append(rule.name)
        return None, failed


def _guard(rule: Rule) -> str:
    cond = f"({rule.when})"
    if rule.from_stages is not None:
        cond = f"stage in {json.dumps(list(rule.from_stages))} && {cond}"
    return cond


def compile_model(
    spec: ModelSpec, version: int, served: ServedModel | None = None
) -> CompiledModel:
    """Check and compile every expression; raise ModelError naming each problem."""
    errors: list[tuple[str, str]] = []
    known = {s.value for s in Stage}
    if not spec.stages:
        errors.append(("stages", "at least one stage is required"))
    for i, stage in enumerate(spec.stages):
        if stage not in known:
            errors.append((f"stages[{i}]", f"unknown stage '{stage}'; known: {sorted(known)}"))
    if len(set(spec.stages)) != len(spec.stages):
        errors.append(("stages", "stages must be unique"))
    if len(spec.rules) > MAX_RULES:
        errors.append(("rules", f"at most {MAX_RULES} rules"))
    stages, names = set(spec.stages), set()
    programs: list[Any] = []
    for i, rule in enumerate(spec.rules):
        path = f"rules[{i}]"
        if not rule.name or len(rule.name) > 100:
            errors.append((f"{path}.name", "a name of 1-100 characters is required"))
        if rule.name in names:
            errors.append((f"{path}.name", f"duplicate rule name '{rule.name}'"))
        names.add(rule.name)
        if rule.to not in stages:
            errors.append((f"{path}.to", f"unknown stage '{rule.to}'; not in the model's stages"))
        for stage in rule.from_stages or ():
            if stage not in stages:
                errors.append((f"{path}.from", f"unknown stage '{stage}'"))
        if len(rule.when) > MAX_EXPRESSION:
            errors.append((f"{path}.when", f"at most {MAX_EXPRESSION} characters"))
            continue
        for name in _unknown_names(rule.when):
            errors.append((f"{path}.when", f"unknown fact '{name}'"))
        for stage in _stage_literals(rule.when):
            if stage not in stages and stage != "":
                errors.append((f"{path}.when", f"unknown stage '{stage}'"))
        try:
            program = cel.compile(rule.when)
        except (ValueError, RuntimeError) as exc:
            errors.append((f"{path}.when", f"does not compile: {exc}"))
            continue
        programs.append(program)
        if errors:
            continue
        for label, sample in _samples(spec.stages):
            try:
                result = program.execute(sample)
            except KeyError as exc:  # a tracked_* map without the name
                errors.append(
                    (
                        f"{path}.when",
                        f"fails to evaluate when {label}: no event named {exc}; "
                        f"test it first with {exc} in tracked_...",
                    )
                )
                break
            except (RuntimeError, TypeError, ValueError) as exc:
                errors.append((f"{path}.when", f"fails to evaluate when {label}: {exc}"))
                break
            if not isinstance(result, bool):
                errors.append((f"{path}.when", "must be a boolean expression"))
                break
    if errors:
        raise ModelError(errors)
    chain = '""'
    for rule in reversed(spec.rules):
        chain = f"({_guard(rule)}) ? {json.dumps(rule.to)} : {chain}"
    used = {"stage"} | {n for r in spec.rules for n in _names(r.when)}
    return CompiledModel(version, spec, cel.compile(chain), programs, tuple(sorted(used)), served)


# The default model (docs/design.md, "Lifecycle model"). Inactivity thresholds are in
# days. "Top CLV decile" is the served score model's `clv_top_decile`: fixed per model
# version, so a customer's stage depends on their own events, not on everyone else's
# (a refit is a model change), and it means the same in every currency's base.
_CUSTOMER = "purchases_total > 0"
_TOP_CLV = "(clv != null && clv_top_decile != null && clv >= clv_top_decile)"
DEFAULT_MODEL = ModelSpec(
    stages=tuple(s.value for s in Stage),
    rules=(
        Rule(
            "lapsed_no_purchase_180d",
            "lapsed",
            f"{_CUSTOMER} && days_since_last_purchase >= 180.0",
            from_stages=None,
        ),
        Rule(
            "lapsed_subscription_cancelled",
            "lapsed",
            'subscription_status == "cancelled" && (last_purchase_at == null || '
            "days_since_last_purchase > days_since_subscription_cancelled)",
        ),
        Rule(
            "won_back_after_lapse",
            "won_back",
            f'(stage == "lapsed" && purchases_in_stage > 0) || '
            f'(stage == "won_back" && purchases_in_stage == 0 && {_CUSTOMER})',
            from_stages=("lapsed", "won_back"),
        ),
        Rule(
            "at_risk",
            "at_risk",
            "(churn_probability != null && churn_probability >= 0.5) || "
            "open_failed_payments > 0 || "
            f"({_CUSTOMER} && purchases_total >= 2 && "
            "days_since_last_purchase > 2.0 * avg_days_between_purchases) || "
            # One purchase gives no usual gap: 90 days stands in for it.
            f"({_CUSTOMER} && purchases_total == 1 && days_since_last_purchase > 90.0)",
        ),
        Rule(
            "advocate",
            "advocate",
            f"(purchases_365d >= 4 || {_TOP_CLV}) && latest_nps != null && latest_nps >= 9",
        ),
        Rule("loyal", "loyal", f"purchases_365d >= 4 || {_TOP_CLV}"),
        Rule(
            "onboarding",
            "onboarding",
            "days_as_customer != null && days_as_customer <= 30.0 && purchases_total <= 1",
        ),
        Rule("active", "active", "days_as_customer != null"),
        Rule("prospect", "prospect", "true"),
    ),
)
