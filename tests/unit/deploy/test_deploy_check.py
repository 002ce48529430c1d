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


def test_a_console_backend_url_that_misses_its_service_fails(deploy: Path) -> None:
    _tool(checker.kubectl)
    config = deploy / "k8s" / "base" / "config.yaml"
    _edit(config, '"http://clm-scoring"', '"http://clm-score"')
    _edit(config, '"http://clm-campaigns"', '"http://clm-campaigns:8004"')
    _edit(config, '  CLM_CONSOLE_INGEST_URL: "http://clm-ingest"\n', "")
    problems = "\n".join(_check(deploy, "manifests"))
    console = "Deployment/clm-console container console"
    assert f"{console}: CLM_CONSOLE_SCORING_URL=http://clm-score does not name" in problems
    assert f"{console}: CLM_CONSOLE_CAMPAIGNS_URL=http://clm-campaigns:8004: Service" in problems
    assert f"{console}: CLM_CONSOLE_INGEST_URL is not set" in problems
    assert "CLM_CONSOLE_STAGE_ENGINE_URL" not in problems


def test_an_overlay_that_leaves_an_image_untagged_fails(deploy: Path) -> None:
    _tool(checker.kubectl)
    prod = deploy / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    _edit(prod, "  - name: clm/console\n", "  - name: clm/console-old\n")
    problems = _check(deploy, "manifests")
    assert problems == [
        "overlays/prod Deployment/clm-console container console: image clm/console has no "
        "tag: add it to the overlay's images"
    ]


def test_a_console_alert_that_fires_with_one_pod_up_fails_the_rule_tests(deploy: Path) -> None:
    _tool(checker.promtool)
    rules = deploy / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
    down = '(sum(up{job="clm-console"}) or vector(0)) == 0'
    _edit(rules, down, 'min(up{job="clm-console"}) == 0')
    [problem] = _check(deploy, "rules")
    assert "ClmConsoleDown" in problem


def test_the_live_metrics_check_skips_a_service_the_local_stack_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console joined the checker's services before the local stack started it."""
    httpx = pytest.importorskip("httpx")
    devstack = pytest.importorskip("clm_devstack.stack")
    started: list[tuple[str, ...]] = []

    class FakeStack:
        def __init__(self, **kwargs: object) -> None:
            self.services = kwargs["services"]

        def start_infrastructure(self) -> None: ...

        def prepare(self) -> None: ...

        def start_services(self, timeout: float) -> None:
            started.append(tuple(s.name for s in self.services))

        def stop(self) -> None: ...

    class Answer:
        status_code = 200
        text = "# TYPE clm_up gauge\nclm_up 1\n"

    without_console = tuple(s for s in devstack.SERVICES if s.name != "console")
    monkeypatch.setattr(devstack, "SERVICES", without_console)
    monkeypatch.setattr(devstack, "Stack", FakeStack)
    monkeypatch.setattr(httpx, "get", lambda *a, **k: Answer())
    logged: list[str] = []
    report = checker.Report()
    found = checker.live_expositions(report, logged.append)
    assert started == [("ingest", "stage-engine", "scoring", "campaigns")]
    assert sorted(found) == ["campaigns", "ingest", "scoring", "stage-engine"]
    assert logged == ["metrics: the local stack has no console: not checked live"]
    assert report.problems == []


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
