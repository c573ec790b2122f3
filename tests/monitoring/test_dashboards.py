"""dashboards/*.json: provisioning rules, Grafana's own schema (npm @grafana/schema, type-checked
by TypeScript), and PromQL that parses (Prometheus's grammar and promtool)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .lib import (
    DASHBOARDS,
    HERE,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    node_modules,
    parse_promql,
    render_rule_groups,
    rules_of,
    substitute,
    tool,
)

DS_REF = {"type": "prometheus", "uid": "${datasource}"}


def test_there_is_a_dashboard():
    assert [p.name for p in DASHBOARDS] == ["ml-service.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_provisioning_contract(path):
    """Fixed uid, a `datasource` variable every panel and target uses, no import placeholders
    (`__inputs`, `${DS_...}` break sidecar provisioning)."""
    text = path.read_text()
    dash = json.loads(text)
    assert "__inputs" not in dash and "__requires" not in dash
    assert "${DS_" not in text and "$DS_" not in text
    assert re.fullmatch(r"[a-z0-9-]{8,40}", dash.get("uid", "")), dash.get("uid")
    assert dash.get("id") is None, "a fixed numeric id clashes between Grafana instances"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    problems, ids = [], []
    for panel in iter_panels(dash):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DS_REF:
            problems.append(f"panel {panel['title']!r}: datasource {panel.get('datasource')}")
        for target in panel.get("targets", []):
            if target.get("datasource") != DS_REF:
                problems.append(f"panel {panel['title']!r} target {target.get('refId')}")
        if not panel.get("description"):
            problems.append(f"panel {panel['title']!r}: no description (how to read it)")
    for var in variables.values():
        if var["type"] == "query" and var.get("datasource") != DS_REF:
            problems.append(f"variable {var['name']}: datasource {var.get('datasource')}")
    assert not problems, "\n".join(problems)
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap(path):
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(load_dashboard(path)):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


# --------------------------------------------------------------------------- Grafana schema


def typecheck(tmp_path: Path, dashboards: dict[str, dict]) -> dict[str, str]:
    """Type-check each dashboard (and each panel against its plugin's types) with tsc; returns
    the compiler's errors per dashboard name (empty string = valid)."""
    modules = node_modules()
    (tmp_path / "node_modules").symlink_to(modules, target_is_directory=True)
    (tmp_path / "dashboard_types.ts").write_text((HERE / "dashboard_types.ts").read_text())
    files = {}
    for name, dash in dashboards.items():
        lines = [
            'import type { JsonDashboard, JsonRowPanel, KnownPanel } from "./dashboard_types";',
            f"export const dashboard: JsonDashboard = {json.dumps(dash)};",
        ]
        for i, panel in enumerate(dash.get("panels", [])):
            kind = "JsonRowPanel" if panel.get("type") == "row" else "KnownPanel"
            lines.append(f"export const panel{i}: {kind} = {json.dumps(panel)};")
        files[name] = tmp_path / f"{name}.ts"
        files[name].write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [
            tool("node"),
            str(modules / "typescript" / "bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "--target",
            "es2022",
            *[str(f) for f in files.values()],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = {name: "" for name in files}
    for line in proc.stdout.splitlines():
        for name, f in files.items():
            if line.startswith(f.name + "("):
                errors[name] += line[:400] + "\n"
    # tsc exits non-zero on type errors; an exit without any error line is a crash or usage error
    assert (proc.returncode != 0) == any(errors.values()), proc.stdout + proc.stderr
    return errors


def test_dashboards_match_grafana_schema(tmp_path):
    errors = typecheck(tmp_path, {p.stem: load_dashboard(p) for p in DASHBOARDS})
    assert not any(errors.values()), "\n".join(e for e in errors.values() if e)


def _mutations() -> dict[str, callable]:
    def first(dash, kind):
        return next(p for p in dash["panels"] if p["type"] == kind)

    return {
        "schemaVersion missing": lambda d: d.pop("schemaVersion"),
        "graphTooltip out of enum": lambda d: d.update(graphTooltip=7),
        "unknown top-level key": lambda d: d.update(refreshh="30s"),
        "variable type unknown": lambda d: d["templating"]["list"][1].update(type="prometheus"),
        "panel without type": lambda d: first(d, "timeseries").pop("type"),
        "gridPos not a number": lambda d: first(d, "stat")["gridPos"].update(w="6"),
        "threshold mode unknown": lambda d: first(d, "stat")["fieldConfig"]["defaults"][
            "thresholds"
        ].update(mode="relative"),
        "timeseries legend placement": lambda d: first(d, "timeseries")["options"]["legend"].update(
            placement="top"
        ),
        "stat option misspelt": lambda d: first(d, "stat")["options"].update(colourMode="value"),
        "table custom field option": lambda d: first(d, "table")["fieldConfig"]["defaults"][
            "custom"
        ].update(align="middle"),
        "row panels not a list": lambda d: first(d, "row").update(panels={}),
    }


def test_schema_check_catches_planted_faults(tmp_path):
    """The type check is not vacuous: every planted fault is reported."""
    base = load_dashboard(DASHBOARDS[0])
    variants = {}
    for i, (label, mutate) in enumerate(_mutations().items()):
        dash = copy.deepcopy(base)
        mutate(dash)
        variants[f"fault{i}"] = (label, dash)
    errors = typecheck(tmp_path, {k: v[1] for k, v in variants.items()})
    missed = [label for key, (label, _) in variants.items() if not errors[key]]
    assert not missed, f"faults the schema check did not catch: {missed}"


# --------------------------------------------------------------------------- PromQL


def all_expressions() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for where, expr in dashboard_queries(load_dashboard(path)):
            out.append((f"{path.name}: {where}", substitute(expr)))
    for rule in rules_of(render_rule_groups()):
        out.append((f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]))
    return out


def test_every_expression_parses_with_the_promql_grammar():
    exprs = all_expressions()
    parsed = parse_promql([e for _, e in exprs])
    bad = [
        f"{where}: {p.expr!r} (error at {p.errors})"
        for (where, _), p in zip(exprs, parsed, strict=True)
        if p.errors
    ]
    assert not bad, "\n".join(bad)
    assert all(p.metrics for p in parsed if not p.expr.startswith("vector(")), "no metric named"


def test_grammar_check_is_not_vacuous():
    parsed = parse_promql(["sum(rate(x[5m])", "rate(x[$__rate_interval])", "x{a=}", "up"])
    assert [bool(p.errors) for p in parsed] == [True, True, True, False]


def test_every_dashboard_expression_passes_promtool(tmp_path):
    """promtool parses with the Go parser Prometheus itself runs: wrap each dashboard query in a
    recording rule and check the file."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(all_expressions())
        if not _.startswith("rule ")
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
