"""Action payloads: Jinja2 templates rendered in the immutable sandbox.

The sandbox refuses attribute access to Python internals (`__class__`, `mro`, ...) with a
SecurityError; StrictUndefined turns a missing field into an error instead of "".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clm_events.facts import FACTS

VARIABLES = ("customer", "trigger", "event", "action")
MAX_SOURCE = 16 * 1024
MAX_OUTPUT = 64 * 1024

_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        """`customer.id` on our plain dicts, without the AttributeError the sandbox raises
        and catches before it looks the key up (a fair share of rendering): the same
        result, since a key that is no dict attribute is the sandbox's answer too."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)

# A customer with every field present, to try a template out at validation time.
SAMPLE_CONTEXT: dict[str, Any] = {
    "customer": {
        "id": "cust-sample",
        "stage": "active",
        "stage_since": "2026-01-01T00:00:00+00:00",
        "traits": {"email": "sample@example.com", "name": "Sample", "timezone": "UTC"},
        "facts": dict.fromkeys(FACTS, 0),
        "scores": {"clv": 0.0, "churn_probability": 0.0, "p_alive": 1.0, "expected_purchases": 0.0},
        "recent_purchases": [],
    },
    "trigger": {"id": "trg_sample", "name": "sample", "version": 1},
    "event": {
        "id": "e",
        "source": "s",
        "type": "t",
        "time": "2026-01-01T00:00:00+00:00",
        "data": {},
    },
    "action": {"id": "act_sample", "channel": "webhook"},
}


class TemplateProblem(ValueError):
    """A template is refused (at validation) or cannot be rendered (at send time)."""

    def __init__(self, message: str, *, security: bool = False) -> None:
        super().__init__(message)
        self.security = security


@dataclass(frozen=True)
class Template:
    source: str
    compiled: Any  # jinja2.Template

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            out: str = self.compiled.render(context)
        except SecurityError as exc:
            raise TemplateProblem(f"template refused by the sandbox: {exc}", security=True) from exc
        except TemplateError as exc:
            raise TemplateProblem(f"template error: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from exc
        if len(out) > MAX_OUTPUT:
            raise TemplateProblem(f"rendered payload is larger than {MAX_OUTPUT} bytes")
        return out


def compile_template(source: str) -> Template:
    """Parse and check a template: syntax, known variables, no dunder/underscore access."""
    if len(source) > MAX_SOURCE:
        raise TemplateProblem(f"template is longer than {MAX_SOURCE} characters")
    try:
        tree = _ENV.parse(source)
    except TemplateError as exc:
        raise TemplateProblem(f"template does not compile: {exc}") from exc
    unknown = sorted(meta.find_undeclared_variables(tree) - set(VARIABLES))
    if unknown:
        raise TemplateProblem(
            f"unknown template variable(s) {', '.join(unknown)}; templates see "
            f"{', '.join(VARIABLES)}"
        )
    # Refuse escapes at validation already; the sandbox also refuses them at render, and
    # catches the ones built at run time (`attr("_" ~ "_class__")`).
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            names = [node.attr]
        elif isinstance(node, nodes.Getitem):
            names = [_const(node.arg)]
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            names = [_const(a) for a in node.args]
        else:
            names = []
        for name in names:
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateProblem(
                    f"template reaches Python internals ('{name}'), which the sandbox refuses",
                    security=True,
                )
    compiled = _ENV.from_string(tree)
    # Every render copies the template's globals into a new context; as the default
    # ChainMap (template over environment) that copy was a third of a small render. The
    # environment's globals never change here, so a flat dict holds the same names.
    compiled.globals = dict(compiled.globals)
    template = Template(source, compiled)
    try:
        template.render(SAMPLE_CONTEXT)
    except TemplateProblem as exc:
        # Only a sandbox refusal is final here: a field missing from the sample customer
        # may well be there for real ones.
        if exc.security:
            raise
    return template


def _const(node: nodes.Node) -> Any:
    return node.value if isinstance(node, nodes.Const) else None
