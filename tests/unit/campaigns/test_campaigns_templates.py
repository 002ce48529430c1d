"""Action templates: missing values (empty or suppressed, named by path) and render limits."""

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clm_campaigns.domain.templates import (
    MAX_OUTPUT,
    SAMPLE_CONTEXT,
    TemplateProblem,
    compile_template,
    missing_paths,
)

WEBHOOK = (
    '{"email": {{ customer.traits.email | tojson }}, "name": {{ customer.traits.name | tojson }}, '
    '"stage": {{ customer.stage | tojson }}, "clv": {{ customer.scores.clv | tojson }}}'
)


def context(traits: dict[str, Any] | None = None, **data: Any) -> dict[str, Any]:
    """The sample context with these traits and event data."""
    ctx = copy.deepcopy(SAMPLE_CONTEXT)
    if traits is not None:
        ctx["customer"]["traits"] = traits
    ctx["event"]["data"] = data
    return ctx


def problem(source: str, ctx: dict[str, Any], **kwargs: Any) -> TemplateProblem:
    with pytest.raises(TemplateProblem) as caught:
        compile_template(source).render(ctx, **kwargs)
    return caught.value


# --- missing values --------------------------------------------------------------------


def test_a_missing_trait_is_null_through_tojson_and_empty_in_text_by_default() -> None:
    no_email = context({"name": "Ada"})
    assert compile_template(WEBHOOK).render(no_email) == (
        '{"email": null, "name": "Ada", "stage": "active", "clv": 0.0}'
    )
    assert compile_template("[{{ customer.traits.email }}]").render(no_email) == "[]"
    nested = compile_template('{{ {"to": customer.traits.email} | tojson }}')
    assert nested.render(no_email) == '{"to": null}'


def test_an_empty_missing_value_is_falsy_iterates_as_empty_and_takes_a_default() -> None:
    t = compile_template(
        "{% if customer.traits.email %}yes{% else %}no{% endif %}"
        "|{% for tag in customer.traits.tags %}{{ tag }}{% endfor %}"
        '|{{ customer.traits.email | default("none") }}'
    )
    assert t.render(context({})) == "no||none"


def test_suppress_names_the_full_path_of_the_missing_value() -> None:
    for source in (
        "{{ customer.traits.email }}",
        '{{ customer["traits"]["email"] }}',
        "{{ customer.traits.email | tojson }}",
        '{{ {"to": customer.traits.email} | tojson }}',
        "{% if customer.traits.email %}x{% endif %}",
    ):
        caught = problem(source, context({}), missing="suppress")
        assert caught.kind == "missing_variable", source
        assert caught.path == "customer.traits.email", source
        assert str(caught) == "customer.traits.email is missing", source


def test_suppress_still_lets_a_default_or_a_defined_test_handle_the_value() -> None:
    t = compile_template(
        '{{ customer.traits.email | default("none") }}'
        "{% if customer.traits.email is defined %}!{% endif %}"
    )
    assert t.render(context({}), missing="suppress") == "none"


def test_a_chain_below_a_missing_value_is_missing_too() -> None:
    source = "[{{ customer.traits.address.city }}]"
    assert compile_template(source).render(context({})) == "[]"
    caught = problem(source, context({}), missing="suppress")
    assert caught.path == "customer.traits.address.city"
    assert problem("{{ event.data.items }}", {"event": {}}, missing="suppress").path == (
        "event.data.items"
    )


def test_a_lookup_built_at_run_time_names_the_key_and_the_object() -> None:
    caught = problem(
        "{{ customer.traits[event.data.field] }}", context({}, field="nickname"), missing="suppress"
    )
    assert caught.kind == "missing_variable"
    assert "nickname" in str(caught) and "dict" in str(caught)


def test_missing_paths_lists_what_the_template_reads_and_the_customer_lacks() -> None:
    t = compile_template(
        "{{ customer.traits.email }} {{ customer.traits.address.city }} {{ customer.stage }}"
        '{{ customer["traits"]["name"] }}'
    )
    assert missing_paths(t, context({"name": "Ada"})) == [
        "customer.traits.email",
        "customer.traits.address.city",
    ]
    assert (
        missing_paths(t, context({"name": "Ada", "email": "a@b", "address": {"city": "X"}})) == []
    )


# --- limits ----------------------------------------------------------------------------


LOOPS = (
    "{% for i in range(event.data.n) %}{% for j in range(event.data.n) %}{% endfor %}{% endfor %}"
)


def test_a_nested_loop_that_outputs_nothing_is_stopped_by_the_step_limit() -> None:
    # 3 * 10**7 iterations: seconds of rendering before there were limits.
    start = time.perf_counter()
    caught = problem(LOOPS, context(n=5500), time_limit=None)
    assert caught.kind == "limit" and "MAX_STEPS" in str(caught)
    assert time.perf_counter() - start < 1.0


def test_a_slow_render_is_stopped_by_the_time_limit() -> None:
    caught = problem(LOOPS, context(n=5500), time_limit=0.001)
    assert caught.kind == "limit" and "time limit (1 ms)" in str(caught)


def test_a_chain_of_heavy_filters_meets_the_time_limit_without_any_loop() -> None:
    source = "{% set r = range(event.data.n) | list %}" + "{{ r | unique | list | length }}" * 300
    caught = problem(source, context(n=100_000), time_limit=0.01)
    assert caught.kind == "limit" and "time limit" in str(caught)


class Counting:
    """An iterable that counts how far it was read."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i


def test_output_over_max_output_is_stopped_while_rendering() -> None:
    items = Counting(100_000)
    caught = problem(
        '{% for i in event.data.items_ %}{{ "x" * 1000 }}{% endfor %}', context(items_=items)
    )
    assert caught.kind == "limit" and "MAX_OUTPUT" in str(caught)
    assert items.read <= MAX_OUTPUT // 1000 + 2  # stopped at the limit, not at the end


def test_a_buffered_block_over_max_output_is_stopped_too() -> None:
    source = (
        '{% set s %}{% for i in range(event.data.n) %}{{ "x" * 1000 }}{% endfor %}{% endset %}'
        "{{ s | length }}"
    )
    assert compile_template(source).render(context(n=10)) == "10000"
    assert problem(source, context(n=100)).kind == "limit"


@pytest.mark.parametrize(
    "expression",
    [
        '"x" * 10**9',
        '"x" * event.data.n',
        '["x"] * event.data.n',
        "10 ** (10 ** 8)",  # Jinja's ** groups to the left: 10 ** 10 ** 8 is (10 ** 10) ** 8
        "10 ** event.data.n",
        '"x" | center(10**9)',
        '"x" | center(event.data.n)',
        '"x".center(event.data.n)',
        '"a\nb" | indent(event.data.n)',
        '"x" | wordwrap(event.data.n)',
        '"x" | truncate(event.data.n)',
        '"%*s" | format(event.data.n, "x")',
        '"%1000000000s" | format("x")',
        '"%1000000000s" % "x"',
        '"{:>1000000000}".format("x")',
        'range(100000) | join("x" * 60000)',
    ],
)
def test_a_single_operation_building_a_huge_value_is_refused_before_it_runs(
    expression: str,
) -> None:
    start = time.perf_counter()
    caught = problem("{{ (" + expression + ") | length }}", context(n=10**9))
    assert caught.kind == "limit" and "MAX_OUTPUT" in str(caught), expression
    assert time.perf_counter() - start < 1.0


def test_validation_refuses_a_template_that_breaks_a_limit_on_the_sample_customer() -> None:
    for source in (
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        '{{ "x" * 10**9 }}',
        '{% for i in range(100) %}{{ "x" * 1000 }}{% endfor %}',
    ):
        with pytest.raises(TemplateProblem) as caught:
            compile_template(source)
        assert caught.value.kind == "limit", source


def test_validation_refuses_escapes_but_not_fields_the_sample_customer_lacks() -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_template("{{ customer.traits.update }}")
    assert caught.value.kind == "sandbox" and caught.value.security
    with pytest.raises(TemplateProblem) as caught:
        compile_template("{{ customer | _path }}")
    assert caught.value.kind == "sandbox"
    compile_template("{{ customer.traits.nickname | upper }}")
    compile_template("{{ customer.traits.nickname + 1 }}")


def test_other_failures_are_errors() -> None:
    caught = problem("{{ customer.traits.name + 1 }}", context({"name": "Ada"}))
    assert caught.kind == "error" and not caught.security


# --- unchanged behaviour ---------------------------------------------------------------


def test_a_normal_template_renders_as_before() -> None:
    assert compile_template(WEBHOOK).render(SAMPLE_CONTEXT) == (
        '{"email": "sample@example.com", "name": "Sample", "stage": "active", "clv": 0.0}'
    )
    t = compile_template(
        "{% for p in customer.recent_purchases %}{{ loop.index }}:{{ p.sku }}"
        "{{ ',' if not loop.last }}{% endfor %} {{ customer.traits.items() | list | length }}"
        ' {{ "%05.1f" % customer.scores.clv }} {{ "{:>4}".format(customer.stage[:2]) }}'
    )
    purchases = [{"sku": "a"}, {"sku": "b"}]
    ctx = context({"email": "e"})
    ctx["customer"]["recent_purchases"] = purchases
    assert t.render(ctx) == "1:a,2:b 1 000.0   ac"


def test_tojson_gives_jinjas_output() -> None:
    stock = EvalContext(ImmutableSandboxedEnvironment())
    t = compile_template("{{ event.data.v | tojson }}|{{ event.data.v | tojson(2) }}")
    for value in ["<a href='x'>&</a>", "ünï", 3, 2.5, None, True, [1, {"b": [None], "a": "<"}]]:
        expected = f"{do_tojson(stock, value)}|{do_tojson(stock, value, 2)}"
        assert t.render(context(v=value)) == expected, value
