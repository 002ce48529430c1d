"""deploy/check.py catches what would break production monitoring or a rollout: a broken
manifest, a rule promtool refuses, and an alert or panel on a metric no service exports.
Each test breaks one thing in a copy of deploy/ and expects the checker to name it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", REPO / "deploy" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def _tool(find: Callable[[], str]) -> None:
    """Skip where the tool is missing (CI installs both: see .ci/run and the Makefile)."""
    try:
        find()
    except SystemExit as exc:
        pytest.skip(str(exc))


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ with docs/operations.md beside it, as in the repository."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns(".check-*"))
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "operations.md", tmp_path / "docs" / "operations.md")
    return tmp_path / "deploy"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _check(root: Path, *steps: str) -> list[str]:
    problems: list[str] = checker.check(root, only=steps, metrics="registry", log=lambda _: None)
    return problems


def test_the_repository_deploy_rules_dashboard_and_metric_names_pass(deploy: Path) -> None:
    _tool(checker.promtool)
    assert _check(deploy, "rules", "dashboard", "metrics") == []


def test_a_manifest_with_a_wrong_field_or_probe_fails(deploy: Path) -> None:
    _tool(checker.kubectl)
    ingest = deploy / "k8s" / "base" / "ingest.yaml"
    _edit(ingest, "path: /readyz", "path: /healthz")
    _edit(ingest, "revisionHistoryLimit: 5", "revisionHistoryLimit: five")
    problems = "\n".join(_check(deploy, "manifests"))
    assert "Deployment/clm-ingest" in problems
    assert "revisionHistoryLimit" in problems  # the Kubernetes schema
    assert "probes must be /healthz and /readyz" in problems  # the house rule


def test_a_rule_promtool_refuses_fails(deploy: Path) -> None:
    _tool(checker.promtool)
    rules = deploy / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
    _edit(rules, "max(clm_stage_timer_lag_seconds) > 300", "max(clm_stage_timer_lag_seconds) >")
    problems = _check(deploy, "rules")
    assert any("promtool check rules failed" in p for p in problems), problems


def test_an_alert_that_no_longer_fires_on_its_case_fails_the_rule_tests(deploy: Path) -> None:
    _tool(checker.promtool)
    rules = deploy / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
    _edit(rules, "(clm_outbox_oldest_age_seconds) > 60", "(clm_outbox_oldest_age_seconds) > 6000")
    [problem] = _check(deploy, "rules")
    assert problem.startswith("prometheus/alerts_test.yaml: promtool test rules failed")
    assert "ClmOutboxBacklog" in problem


def test_an_alert_on_a_metric_no_service_exports_fails(deploy: Path) -> None:
    _tool(checker.promtool)
    rules = deploy / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
    _edit(rules, "max by (service) (clm_outbox_oldest_age_seconds)", "max(clm_outbox_age_seconds)")
    problems = _check(deploy, "metrics")
    assert "PrometheusRule: uses clm_outbox_age_seconds, which no service exports" in problems


def test_a_panel_on_a_misspelt_metric_fails(deploy: Path) -> None:
    _tool(checker.promtool)
    board = deploy / "grafana" / "clm.json"
    dashboard = json.loads(board.read_text())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace("clm_ingest_events_accepted_total", "clm_ingest_events")
    board.write_text(json.dumps(dashboard))
    assert _check(deploy, "dashboard", "metrics") == [
        "dashboard: uses clm_ingest_events, which no service exports"
    ]


def test_an_alert_without_its_runbook_section_fails(deploy: Path) -> None:
    _tool(checker.promtool)
    ops = deploy.parent / "docs" / "operations.md"
    _edit(ops, "### ClmModelStale", "### Model is old")
    assert _check(deploy, "rules") == [
        "alert ClmModelStale: runbook_url: docs/operations.md has no section #clmmodelstale"
    ]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (group) (rate(clm_consumer_messages_total{topic=~".*inbound"}[5m]))',
            {"clm_consumer_messages_total"},
        ),
        ("max(a_seconds) > 3 * 86400 and on (job) up == 0", {"a_seconds", "up"}),
        (
            "histogram_quantile(0.99, sum(rate(x_bucket[$__rate_interval])) by (le))",
            {"x_bucket"},
        ),
        ("(sum(increase(y_total[30m])) or vector(0)) + 1e3 == 0", {"y_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert checker.metric_names(expr) == names
