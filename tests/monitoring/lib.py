"""Helpers of the monitoring tier: rendered rules, dashboard queries, PromQL parsing, a real
Prometheus process."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from support import tools
from support.kube import HelmError, load_documents, run_helm, template_args
from support.net import free_port, wait_http
from support.poll import wait_until
from support.procs import spawn, stop_group, tail

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = ROOT / "charts" / "ml-service"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
TOOLS = ROOT / ".tools"
NODE_MODULES = TOOLS / "monitoring-node" / "node_modules"
KPS_METRICS = HERE / "kube_prometheus_stack_metrics.txt"
RELEASE, NAMESPACE = "ml-service", "ml"


tool = functools.partial(tools.tool, setup="setup-monitoring")


def node_modules() -> Path:
    for pkg in ("typescript", "@grafana/schema", "@prometheus-io/lezer-promql"):
        if not (NODE_MODULES / pkg / "package.json").exists():
            pytest.fail(f"{NODE_MODULES / pkg} missing: run `make setup` (or setup-monitoring)")
    return NODE_MODULES


# --------------------------------------------------------------------------- rules


def nest(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}} (a values file: --set would replace whole lists)."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def render_rule_groups(
    values: dict | None = None, namespace: str = NAMESPACE, release: str = RELEASE
) -> list[dict]:
    """The `spec.groups` of the chart's PrometheusRule, as `helm template` renders it with the
    values given as a dotted-key dict (written to a values file)."""
    import tempfile

    overrides = nest({"prometheusRule.enabled": True, **(values or {})})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="rule-values-") as fh:
        yaml.safe_dump(overrides, fh)
        fh.flush()
        proc = run_helm(
            template_args(CHART, release=release, namespace=namespace, value_files=[fh.name])
        )
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    rules = [d for d in load_documents(proc.stdout) if d.get("kind") == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, got {len(rules)}"
    return rules[0]["spec"]["groups"]


def write_rules(groups: list[dict], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000))
    return path


def rules_of(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"]]


# --------------------------------------------------------------------------- dashboards

# Grafana's built-in and template variables -> values that make the query plain PromQL.
GRAFANA_VARS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "namespace": NAMESPACE,
    "job": RELEASE,
    "class": "malignant",
}


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values' selector)."""
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append(
                    (f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
                )
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query, flags=re.S)
        out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    values = {**GRAFANA_VARS, **(values or {})}

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


# --------------------------------------------------------------------------- PromQL


@dataclass(frozen=True)
class Parsed:
    expr: str
    errors: list[int]
    metrics: list[str]


def parse_promql(exprs: list[str]) -> list[Parsed]:
    """Parse with Prometheus's own Lezer grammar (npm @prometheus-io/lezer-promql)."""
    proc = subprocess.run(
        [tool("node"), str(HERE / "promql_names.cjs")],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules())},
    )
    assert proc.returncode == 0, proc.stderr
    return [Parsed(**p) for p in json.loads(proc.stdout)]


def kps_metrics() -> set[str]:
    """The reviewed list of series that kube-prometheus-stack (cAdvisor, kube-state-metrics,
    Prometheus itself) provides and the app does not."""
    names = set()
    for line in KPS_METRICS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def exported_sample_names(exposition: str) -> set[str]:
    """Every sample name an exposition can produce, from its families (a labelled family without
    children yet still has its HELP/TYPE lines)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "unknown": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# --------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    url: str
    log_path: Path

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        resp = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def rules(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]

    def targets(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def wait_for(self, what: str, predicate, timeout: float = 30.0, interval: float = 0.5):
        return wait_until(predicate, timeout, what, interval,
                          lambda: f"prometheus log:\n{tail(self.log_path, 2000)}")  # fmt: skip


@contextlib.contextmanager
def prometheus(
    workdir: Path,
    scrape_targets: list[str],
    rule_files: list[Path],
    labels: dict[str, str],
    interval: str = "1s",
) -> Iterator[Prometheus]:
    """A real Prometheus (Debian package) on a free port, scraping `scrape_targets` as job
    `labels['job']` every `interval` and evaluating `rule_files` at the same pace."""
    workdir.mkdir(parents=True, exist_ok=True)
    target_labels = {k: v for k, v in labels.items() if k != "job"}
    config = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": labels["job"],
                "static_configs": [{"targets": scrape_targets, "labels": target_labels}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    proc = spawn(
        [
            tool("prometheus"),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        log_path=log_path,
        cwd=workdir,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"prometheus did not start: {exc}\n{tail(log_path)}") from exc
        yield Prometheus(f"http://127.0.0.1:{port}", log_path)
    finally:
        stop_group(proc)
