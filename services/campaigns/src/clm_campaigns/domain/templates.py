"""Action payloads: Jinja2 templates rendered in the immutable sandbox.

The sandbox refuses attribute access to Python internals (`__class__`, `mro`, ...) with a
SecurityError. A missing value is chosen per render: "empty" (prints as "", `tojson` gives
null) or "suppress" (an error naming its path, `customer.traits.email`). Every render is
bounded: its output size, its time, its loop iterations plus calls, and the single operations
that would build a huge value in one step (`"x" * 10**9`, `10 ** (10**8)`, `center(10**9)`)
are refused before they run.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from string import Formatter
from time import perf_counter, thread_time
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError, Undefined, UndefinedError, meta, nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import htmlsafe_json_dumps
from jinja2.utils import missing as _NOTHING
from jinja2.visitor import NodeTransformer

from clm_events.facts import FACTS

VARIABLES = ("customer", "trigger", "event", "action")
MAX_SOURCE = 16 * 1024
MAX_OUTPUT = 64 * 1024  # characters of rendered output, and of any one value built in one step
TIME_LIMIT = 0.05  # seconds of CPU per render, checked at each loop iteration and call
MAX_STEPS = 100_000  # loop iterations plus calls per render

Missing = Literal["empty", "suppress"]
ProblemKind = Literal["missing_variable", "limit", "sandbox", "error"]

_DICT_ATTRIBUTES = frozenset(dir(dict))
_MAX_BITS = 8 * MAX_OUTPUT  # integers built by * and ** stay below MAX_OUTPUT bytes


class TemplateProblem(ValueError):
    """A template is refused (at validation) or cannot be rendered (at send time).

    kind: "missing_variable" (path names it when known), "limit", "sandbox" or "error".
    """

    def __init__(
        self, message: str, *, kind: ProblemKind = "error", path: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path

    @property
    def security(self) -> bool:
        return self.kind == "sandbox"


def _limit(message: str) -> TemplateProblem:
    return TemplateProblem(message, kind="limit")


def _check_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT:
        raise _limit(f"{what} would be larger than MAX_OUTPUT ({MAX_OUTPUT} characters)")


# --- the budget of one render ----------------------------------------------------------


class _Budget:
    """What the render in progress may still spend, and how it treats missing values."""

    __slots__ = ("cpu_start", "deadline", "steps", "suppress", "time_limit")

    def __init__(self, suppress: bool, time_limit: float | None) -> None:
        self.suppress = suppress
        self.steps = MAX_STEPS
        self.time_limit = math.inf if time_limit is None else time_limit
        self.deadline = -math.inf  # the first tick starts the clocks, see _late
        self.cpu_start = -1.0

    def tick(self) -> None:
        """One loop iteration or call."""
        self.steps -= 1
        if self.steps < 0:
            raise _limit(
                f"template makes more than MAX_STEPS ({MAX_STEPS}) loop iterations and calls"
            )
        if perf_counter() > self.deadline:
            self._late()

    def _late(self) -> None:
        # The wall clock is cheap to read but also counts time spent waiting for a CPU on a
        # busy host; the limit is on this thread's CPU time, read only once the wall clock
        # says it may be up. Before the first tick, a template does no repeated work.
        cpu = thread_time()
        if self.cpu_start < 0:
            self.cpu_start = cpu
        elif cpu - self.cpu_start > self.time_limit:
            raise _limit(
                f"template takes longer than the time limit ({self.time_limit * 1000:g} ms)"
            )
        self.deadline = perf_counter() + self.time_limit - (cpu - self.cpu_start)


# Set by Template.render for the template code it runs; None outside a render.
_BUDGET: ContextVar[_Budget | None] = ContextVar("clm_template_budget", default=None)


def _suppressing() -> bool:
    budget = _BUDGET.get()
    return budget is not None and budget.suppress


# --- missing values ----------------------------------------------------------------------


class _MissingError(UndefinedError):
    def __init__(self, message: str, path: str | None) -> None:
        super().__init__(message)
        self.path = path


class _Missing(Undefined):
    """Empty and chainable (`a.b.c` of a missing `a` is missing again), or, when the render
    suppresses missing values, an error on any use. Knows its path for static chains."""

    __slots__ = ("_missing_path",)

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = _NOTHING,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
        path: str | None = None,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        # A bare variable (`{{ customer }}`) is its own path.
        self._missing_path = name if path is None and obj is _NOTHING else path

    @property
    def _undefined_message(self) -> str:
        if self._missing_path is not None and not self._undefined_hint:
            return f"{self._missing_path} is missing"
        return super()._undefined_message

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _MissingError(self._undefined_message, self._missing_path)

    def _use(self) -> None:
        if _suppressing():
            self._fail_with_undefined_error()

    # Arithmetic and comparisons fail in both modes, as with Jinja's Undefined.
    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = _fail_with_undefined_error
    __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = __pos__ = __neg__ = __call__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __int__ = __float__ = __complex__ = __pow__ = __rpow__ = _fail_with_undefined_error

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        self._use()
        return self

    def __getitem__(self, key: Any) -> Any:
        self._use()
        return self

    def __str__(self) -> str:
        self._use()
        return ""

    def __len__(self) -> int:
        self._use()
        return 0

    def __iter__(self) -> Iterator[Any]:
        self._use()
        return iter(())

    def __bool__(self) -> bool:
        self._use()
        return False

    def __eq__(self, other: object) -> bool:
        self._use()
        return type(self) is type(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        self._use()
        return id(type(self))


def _json_default(value: Any) -> None:
    """`tojson` of a missing value (also inside a list or dict): null, or the error."""
    if isinstance(value, _Missing):
        value._use()
        return None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Jinja's tojson policy (sort_keys), built once instead of per call.
_JSON = json.JSONEncoder(sort_keys=True, default=_json_default)


def _tojson(value: Any, indent: int | None = None) -> str:
    """Jinja's tojson, same output, faster; a missing value (also nested) is null, or the
    error when missing values are suppressed."""
    if indent is not None:
        return htmlsafe_json_dumps(value, sort_keys=True, default=_json_default, indent=indent)
    return htmlsafe_json_dumps(value, dumps=_JSON.encode)


# Each step of a static chain: (key, looked up as an item, a plain dict key gives the answer).
Steps = tuple[tuple[Any, bool, bool], ...]


def _lookup(obj: Any, path: str, steps: Steps) -> Any:
    """A static chain (`customer.traits.email`) in one call, so that a missing value knows its
    whole path. The sandbox's lookups, with plain dict keys first as in _Sandbox.getattr."""
    for key, item, plain in steps:
        if plain and type(obj) is dict:
            try:
                obj = obj[key]
                continue
            except KeyError:
                pass
        if isinstance(obj, Undefined):
            return _Missing(path=path)
        obj = _ENV.getitem(obj, key) if item else _ENV.getattr(obj, key)
        if isinstance(obj, Undefined):
            return _Missing(path=path)
    return obj


@pass_context  # never folded at compile time, which would drop the counting
def _counted(context: Context, iterable: Any) -> Any:
    budget = _BUDGET.get()
    return iterable if budget is None else _count(iterable, budget)


def _count(iterable: Iterable[Any], budget: _Budget) -> Iterator[Any]:
    for item in iterable:
        budget.tick()
        yield item


# --- one-step blow-ups -------------------------------------------------------------------

_PERCENT = re.compile(r"%(?:%|(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?)")


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 10 else MAX_OUTPUT + 1


def _check_widths(numbers: Iterable[str], from_values: bool, values: Iterable[Any]) -> None:
    widths = [_number(n) for n in numbers]
    if from_values:  # `%*s`, `{:{}}`: a width comes from the values; any int may be it
        widths += [v for v in values if isinstance(v, int)]
    _check_size(max(widths, default=0), "a format width")


def _check_percent(fmt: str, values: Any) -> None:
    specs = _PERCENT.findall(fmt)
    numbers = [n for spec in specs for n in spec if n not in ("", "*")]
    values = values if isinstance(values, tuple) else (values,)
    _check_widths(numbers, any("*" in spec for spec in specs), values)


def _check_format(fmt: str, values: Iterable[Any]) -> None:
    try:
        specs = [spec for _, _, spec, _ in Formatter().parse(fmt) if spec]
    except ValueError:
        return  # malformed: format() itself says so
    numbers = re.findall(r"\d+", " ".join(specs))
    _check_widths(numbers, any("{" in spec for spec in specs), values)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int):
                _check_size(len(seq) * n, "a repetition")
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_BITS:
                raise _limit(f"a product would be larger than MAX_OUTPUT ({MAX_OUTPUT} bytes)")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if (abs(left).bit_length() - 1) * right > _MAX_BITS:
                raise _limit(f"a power would be larger than MAX_OUTPUT ({MAX_OUTPUT} bytes)")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left, right)


def _replaced_size(s: str, old: Any, new: Any, count: Any = None) -> int:
    found = s.count(str(old))  # "" is found len(s) + 1 times
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(s) + found * max(len(str(new)) - len(str(old)), 0)


def _check_str_method(method: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`"x".center(10**9)` and friends, called as methods: refuse the blow-ups; returns the
    arguments (an iterable to join is made a list, to be measured)."""
    s = getattr(method, "__self__", None)
    if not isinstance(s, str) or not args:
        return args
    name = getattr(method, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(args[0], int):
        _check_size(args[0], f"str.{name}")
    elif name == "expandtabs" and isinstance(args[0], int):
        _check_size(len(s) + s.count("\t") * args[0], "str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        _check_size(_replaced_size(s, *args[:3]), "str.replace")
    elif name == "translate":
        table = args[0]
        values = table.values() if isinstance(table, Mapping) else table
        longest = max((len(v) for v in values if isinstance(v, str)), default=1)
        _check_size(len(s) * longest, "str.translate")
    elif name == "join":
        items = list(args[0])
        _check_size(len(s) * (len(items) - 1), "str.join")
        return (items, *args[1:])
    return args


class _Sandbox(ImmutableSandboxedEnvironment):
    # Checked by call_binop; being intercepted, they are not folded at compile time either.
    intercepted_binops = frozenset(("*", "**", "%"))

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`customer.id` on our plain dicts, without the AttributeError the sandbox raises
        and catches before it looks the key up (a fair share of rendering): the same
        result, since a key that is no dict attribute is the sandbox's answer too."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Refused at once: an undefined value would print as "" when missing values are empty.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        args = _check_str_method(obj, args)
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call_filter(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        # `map("upper")` and friends: one filter call per item
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        return super().call_filter(name, value, *args, **kwargs)

    def call_test(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        # `select("odd")` and friends: one test per item
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        return super().call_test(name, value, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`"{:>1000000000}".format(x)`: refuse the width before formatting."""
        plain = super().wrap_str_format(value)
        if plain is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            values = args[0].values() if is_map and args else [*args, *kwargs.values()]
            _check_format(fmt, values)
            return plain(*args, **kwargs)

        return checked


def _concat(chunks: Iterable[str]) -> str:
    """Jinja's join, of the rendered stream and of every buffered block (macros, `{% set %}`
    blocks), stopping as soon as the text passes MAX_OUTPUT."""
    if isinstance(chunks, list):
        size = sum(map(len, chunks))
    else:
        parts: list[str] = []
        append = parts.append
        size = 0
        for chunk in chunks:
            append(chunk)
            size += len(chunk)
            if size > MAX_OUTPUT:
                break
        chunks = parts
    if size > MAX_OUTPUT:
        raise _limit(f"template output is larger than MAX_OUTPUT ({MAX_OUTPUT} characters)")
    return "".join(chunks)


_ENV = _Sandbox(undefined=_Missing, autoescape=False)
_ENV.concat = _concat  # type: ignore[method-assign]
_ENV.filters["tojson"] = _tojson
_ENV.filters["_path"] = _lookup
_ENV.filters["_counted"] = _counted


def _guard(table: dict[str, Any], name: str, size: Callable[..., int] | None = None) -> None:
    """Count a filter or global as a call, and refuse it before it runs when `size` estimates
    its result past MAX_OUTPUT."""
    plain = table[name]

    @functools.wraps(plain)  # keeps Jinja's pass_context/pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        if size is not None:
            _check_size(size(*args, **kwargs), f"{name}()")
        return plain(*args, **kwargs)

    table[name] = guarded


def _lines(s: Any) -> int:
    return str(s).count("\n") + 1


def _wrapped_size(
    env: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    *_: Any,
    **__: Any,
) -> int:
    # The width itself, or a wrapstring about every width/2 characters.
    n = len(str(s))
    return max(width, n + 2 * n // max(width, 1) * len(str(wrapstring or "\n")))


_guard(_ENV.filters, "center", lambda s, width=80: width)
_guard(
    _ENV.filters,
    "indent",
    lambda s, width=4, *_, **__: _lines(s) * (len(width) if isinstance(width, str) else width),
)
_guard(_ENV.filters, "wordwrap", _wrapped_size)
_guard(_ENV.filters, "truncate", lambda env, s, length=255, *_, **__: length)
_guard(
    _ENV.filters,
    "replace",
    lambda ctx, s, old, new, count=None: _replaced_size(str(s), old, new, count),
)
_guard(_ENV.filters, "batch", lambda value, linecount, fill_with=None: linecount)
_guard(_ENV.filters, "slice", lambda ctx, value, slices, fill_with=None: slices)
_guard(_ENV.globals, "lipsum", lambda n=5, html=True, min=20, max=100: n * max * 8)
# Python-level work per item, on inputs up to range()'s 100,000 items: each counts as a call,
# so that a chain of them meets the deadline too.
for _name in (
    *("dictsort", "groupby", "map", "max", "min", "reject", "rejectattr", "select"),
    *("selectattr", "sort", "sum", "title", "unique", "urlize", "xmlattr"),
):
    _guard(_ENV.filters, _name)


def _guarded_format(plain: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(plain)
    def guarded(value: Any, *args: Any, **kwargs: Any) -> str:
        _check_percent(str(value), tuple(kwargs.values()) or args)
        return plain(value, *args, **kwargs)

    return guarded


def _guarded_join(plain: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(plain)
    def guarded(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> str:
        items = list(value)
        _check_size(len(str(d)) * (len(items) - 1), "join()")
        return plain(eval_ctx, items, d, attribute)

    return guarded


_ENV.filters["format"] = _guarded_format(_ENV.filters["format"])
_ENV.filters["join"] = _guarded_join(_ENV.filters["join"])


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
        "name": "Product Viewed",
        "properties": {},
    },
    "action": {"id": "act_sample", "channel": "webhook"},
}


@dataclass(frozen=True)
class Template:
    source: str
    compiled: Any  # jinja2.Template
    paths: tuple[tuple[str, str, Steps], ...] = ()  # (path, root variable, steps) it reads

    def render(
        self,
        context: Mapping[str, Any],
        *,
        missing: Missing = "empty",
        time_limit: float | None = TIME_LIMIT,
    ) -> str:
        """The rendered text. missing="empty": a missing value is "" (null through tojson),
        falsy and empty; "suppress": using one is an error naming its path. time_limit:
        seconds, None for no time limit (MAX_STEPS still applies)."""
        token = _BUDGET.set(_Budget(missing == "suppress", time_limit))
        try:
            out: str = self.compiled.render(context)  # joined by _concat, as it streams
            return out
        except TemplateProblem:
            raise
        except SecurityError as exc:
            raise TemplateProblem(
                f"template refused by the sandbox: {exc}", kind="sandbox"
            ) from exc
        except UndefinedError as exc:
            path = exc.path if isinstance(exc, _MissingError) else None
            raise TemplateProblem(str(exc), kind="missing_variable", path=path) from exc
        except TemplateError as exc:
            raise TemplateProblem(f"template error: {exc}") from exc
        except RecursionError as exc:
            raise _limit("template recursion is deeper than Python allows") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from exc
        finally:
            _BUDGET.reset(token)


def missing_paths(template: Template, context: Mapping[str, Any]) -> list[str]:
    """The static paths the template reads (`customer.traits.email`) that `context` lacks, as
    a preview warning. Walks the paths found at compile time; renders nothing."""
    found = []
    for path, root, steps in template.paths:
        try:
            value = _lookup(context.get(root, _Missing(name=root)), path, steps)
        except SecurityError:
            continue  # not missing: refused, which rendering reports
        if isinstance(value, Undefined):
            found.append(path)
    return found


class _Instrument(NodeTransformer):
    """Rewrites a parsed template: each static chain rooted at a name (`customer.traits.email`,
    `customer["traits"]`) becomes one `_path` lookup, each `{% for %}` iterable is `_counted`."""

    def __init__(self) -> None:
        self.paths: dict[str, tuple[str, str, Steps]] = {}

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_counted", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Getattr(self, node: nodes.Getattr | nodes.Getitem) -> nodes.Node:
        steps: list[tuple[Any, bool, bool]] = []
        root: nodes.Node = node
        while True:
            if isinstance(root, nodes.Getattr):
                steps.append((root.attr, False, root.attr not in _DICT_ATTRIBUTES))
            elif isinstance(root, nodes.Getitem) and isinstance(root.arg, nodes.Const):
                steps.append((root.arg.value, True, True))
            else:
                break
            root = root.node
        if not (steps and isinstance(root, nodes.Name)):
            result: nodes.Node = self.generic_visit(node)
            return result
        steps.reverse()
        path = root.name + "".join(
            f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
            for key, _, _ in steps
        )
        if root.name in VARIABLES:
            self.paths.setdefault(path, (path, root.name, tuple(steps)))
        args: list[nodes.Expr] = [nodes.Const(path), nodes.Const(tuple(steps))]
        return nodes.Filter(root, "_path", args, [], None, None, lineno=node.lineno)

    visit_Getitem = visit_Getattr


def compile_template(source: str) -> Template:
    """Parse and check a template: syntax, known variables, no dunder/underscore access, and
    a render of SAMPLE_CONTEXT within the limits."""
    if len(source) > MAX_SOURCE:
        raise _limit(f"template is longer than {MAX_SOURCE} characters")
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
    # catches the ones built at run time (`attr("_" ~ "_class__")`). Filters named "_..." are
    # ours (`_path`, `_counted`).
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Getattr):
            names = [node.attr]
        elif isinstance(node, nodes.Getitem):
            names = [_const(node.arg)]
        elif isinstance(node, nodes.Filter | nodes.Test):
            names = [node.name]
            if node.name == "attr":
                names += [_const(a) for a in node.args]
        else:
            names = []
        for name in names:
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateProblem(
                    f"template reaches Python internals ('{name}'), which the sandbox refuses",
                    kind="sandbox",
                )
    instrument = _Instrument()
    tree = instrument.visit(tree)
    compiled = _ENV.from_string(tree)
    # Every render copies the template's globals into a new context; as the default
    # ChainMap (template over environment) that copy was a third of a small render. The
    # environment's globals never change here, so a flat dict holds the same names.
    compiled.globals = dict(compiled.globals)
    template = Template(source, compiled, tuple(instrument.paths.values()))
    try:
        template.render(SAMPLE_CONTEXT)
    except TemplateProblem as exc:
        # A limit or a sandbox refusal is final; a field missing from the sample customer,
        # or an error that comes of its values, may well be fine for real ones.
        if exc.kind in ("limit", "sandbox"):
            raise
    return template


def _const(node: nodes.Node) -> Any:
    return node.value if isinstance(node, nodes.Const) else None
