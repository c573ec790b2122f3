"""Render Helm charts and validate the output strictly, the way a cluster would refuse it.

- `helm_template()` runs the pinned `helm template` (Helm 3 by default, `HELM4` for Helm 4) with a
  release name, namespace and value files, exactly like Argo CD's repo-server does.
- `validate()` checks every document: built-in kinds against the Kubernetes OpenAPI schemas of the
  given versions (kubernetes-validate, strict: unknown fields fail), custom resources against the
  `openAPIV3Schema` of the CRD files given (closed: unknown fields fail, as with
  `kubectl --validate=strict`). A document whose kind has no schema is a finding, never a pass.

kubernetes-validate lives in its own virtualenv (`make setup-chart`), so `validate()` runs this file
as a script with that interpreter and exchanges JSON with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
HELM4 = TOOLS / "bin" / "helm4"
KUBEVAL_PYTHON = TOOLS / "kubernetes-validate" / "bin" / "python"
PROMETHEUS_OPERATOR_CRDS = TOOLS / "crds" / "prometheus-operator"
# Argo Rollouts' manifests, copied from its Go module by `make setup-rollouts` (mk/rollouts.mk).
ROLLOUTS_MANIFESTS = TOOLS / "argo-rollouts-{version}" / "manifests"


class ToolMissingError(RuntimeError):
    pass


class HelmError(RuntimeError):
    """`helm` exited non-zero; the message is its stderr."""


def require(path: Path) -> Path:
    if not path.exists():
        raise ToolMissingError(f"{path} is missing: run `make setup` (or `make setup-chart`)")
    return path


def prometheus_operator_crds() -> list[Path]:
    """ServiceMonitor and PrometheusRule CRD YAML copied from the prometheus-operator Go module."""
    files = sorted(require(PROMETHEUS_OPERATOR_CRDS).glob("*.yaml"))
    if not files:
        raise ToolMissingError(f"no CRD in {PROMETHEUS_OPERATOR_CRDS}: run `make setup-chart`")
    return files


def mk_value(name: str, mk: str) -> str:
    """A `NAME := value` pin of mk/<mk>.mk (the one place tool versions are written)."""
    for line in (ROOT / "mk" / f"{mk}.mk").read_text().splitlines():
        if line.startswith(f"{name} :="):
            return line.split(":=", 1)[1].strip()
    raise RuntimeError(f"{name} missing from mk/{mk}.mk")


def rollouts_version() -> str:
    return mk_value("ROLLOUTS_VERSION", "rollouts")


def rollouts_manifests() -> Path:
    """Argo Rollouts' install.yaml and CRDs (from its Go module) for the pinned version."""
    path = Path(str(ROLLOUTS_MANIFESTS).format(version=rollouts_version()))
    if not (path / "rollout-crd.yaml").exists():
        raise ToolMissingError(f"{path} is missing: run `make setup-rollouts`")
    return path


def crd_files() -> list[Path]:
    """The CRDs of every custom kind the chart renders: ServiceMonitor and PrometheusRule
    (prometheus-operator), Rollout and AnalysisTemplate (Argo Rollouts)."""
    rollouts = rollouts_manifests()
    return [
        *prometheus_operator_crds(),
        rollouts / "rollout-crd.yaml",
        rollouts / "analysis-template-crd.yaml",
    ]


def kube_version_bounds(chart: Path) -> list[str]:
    """Oldest and newest Kubernetes of a chart's `kubeVersion: ">=1.A.0-0 <1.B.0-0"` range."""
    import re

    import yaml

    rng = yaml.safe_load((Path(chart) / "Chart.yaml").read_text())["kubeVersion"]
    low, high = re.search(r">=\s*(\d+)\.(\d+)", rng), re.search(r"<\s*(\d+)\.(\d+)", rng)
    if not (low and high):
        raise ValueError(f"kubeVersion {rng!r} needs a >= and a < bound to be testable")
    return [f"{low[1]}.{low[2]}.0", f"{high[1]}.{int(high[2]) - 1}.0"]


def helm_env() -> dict[str, str]:
    """helm state under .tools (the unittest plugin is registered there), never in $HOME."""
    env = dict(os.environ)
    env.update(
        HELM_PLUGINS=str(TOOLS / "helm" / "plugins"),
        HELM_DATA_HOME=str(TOOLS / "helm" / "data"),
        HELM_CONFIG_HOME=str(TOOLS / "helm" / "config"),
        HELM_CACHE_HOME=str(TOOLS / "helm" / "cache"),
        PATH=f"{TOOLS / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run_helm(args: list[str], helm: Path = HELM, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(require(helm)), *args],
        cwd=cwd,
        env=helm_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def template_args(
    chart: Path | str,
    release: str = "ml-service",
    namespace: str = "default",
    value_files: list[Path | str] = (),
    set_values: dict[str, str] | None = None,
    kube_version: str | None = None,
) -> list[str]:
    args = ["template", release, str(chart), "--namespace", namespace]
    for f in value_files:
        args += ["--values", str(f)]
    for key, value in (set_values or {}).items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


def helm_template(chart: Path | str, *, helm: Path = HELM, **kwargs) -> str:
    """Rendered manifests (all documents, `helm test` hooks included); HelmError on failure."""
    proc = run_helm(template_args(chart, **kwargs), helm=helm)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def load_documents(text: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d is not None]


CHECKOV = TOOLS / "checkov" / "bin" / "checkov"


def checkov_failed_checks(
    renderings: dict[str, str], out_dir: Path, skip: Iterable[str]
) -> dict[str, list[dict]]:
    """One checkov run over rendered manifests (id -> YAML, a file each, in `out_dir`), with the
    checks in `skip` off everywhere: the failed checks of each rendering. An empty or all-failing
    report is an error (checkov checked nothing)."""
    files = {}
    for i, (rid, text) in enumerate(renderings.items()):
        files[rid] = Path(out_dir) / f"rendering{i}.yaml"
        files[rid].write_text(text)
    proc = subprocess.run(
        [str(require(CHECKOV)), "--skip-download", "--framework", "kubernetes", "--quiet",
         "--compact", "-o", "json", "-d", str(out_dir), "--skip-check", ",".join(skip)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if not proc.stdout.strip():
        raise RuntimeError(f"checkov printed no report: {proc.stderr}")
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    if not report["summary"]["passed"] > 0:
        raise RuntimeError(f"checkov passed no check: {report['summary']}")
    failed = report["results"]["failed_checks"]
    return {
        rid: [c for c in failed if Path(c["file_path"]).name == path.name]
        for rid, path in files.items()
    }


def failing_unittest(chart: Path, template: str, work: Path) -> subprocess.CompletedProcess:
    """`helm unittest` over a copy of `chart` (other runs share the work tree) whose one suite
    expects `template`'s Service to be a NodePort, which it is not: the run must fail."""
    import shutil

    copy = Path(work) / Path(chart).name
    shutil.copytree(chart, copy, ignore=shutil.ignore_patterns("tests"))
    (copy / "tests").mkdir()
    (copy / "tests" / "canary_test.yaml").write_text(
        f"suite: canary\ntemplates: [{template}]\ntests:\n"
        "  - it: fails\n    asserts:\n      - equal: {path: spec.type, value: NodePort}\n"
    )
    return run_helm(["unittest", "--color=false", str(copy)])


@dataclass(frozen=True)
class Finding:
    kube_version: str
    kind: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kube_version}] {self.kind}/{self.name}: {self.message}"


def validate(
    documents: list[dict],
    kube_versions: list[str],
    crd_files: list[Path] = (),
) -> list[Finding]:
    """Every problem found in `documents` (empty list = all valid for every version)."""
    payload = {
        "documents": documents,
        "kube_versions": list(kube_versions),
        "crd_files": [str(p) for p in crd_files],
    }
    proc = subprocess.run(
        [str(require(KUBEVAL_PYTHON)), __file__],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"validator crashed: {proc.stderr.strip()}")
    return [Finding(**f) for f in json.loads(proc.stdout)]


# --- below runs inside the kubernetes-validate virtualenv -------------------------------------


def _closed(schema):
    """A CRD schema as the API server applies it with strict field validation: every object that
    lists its properties refuses others, unless it preserves unknown fields; `nullable` honoured."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _crd_schemas(crd_files):
    import yaml

    schemas = {}
    for path in crd_files:
        for crd in yaml.safe_load_all(Path(path).read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = _closed(schema)
    return schemas


def _main() -> None:
    import jsonschema
    import kubernetes_validate

    payload = json.load(sys.stdin)
    crds = _crd_schemas(payload["crd_files"])
    findings = []
    for version in payload["kube_versions"]:
        for doc in payload["documents"]:
            kind = str(doc.get("kind", "?"))
            name = str((doc.get("metadata") or {}).get("name", "?"))

            def found(message, version=version, kind=kind, name=name):
                findings.append(
                    {"kube_version": version, "kind": kind, "name": name, "message": message}
                )

            schema = crds.get((doc.get("apiVersion"), kind))
            if schema is not None:
                validator = jsonschema.Draft7Validator(schema)
                for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                    found(f"{where}: {err.message}")
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                found(f"no schema for {doc.get('apiVersion')} {kind} (not validated = failure)")
            except kubernetes_validate.ValidationError as err:
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                found(f"{where}: {err.message}")
            except kubernetes_validate.utils.VersionNotSupportedError:
                found(f"kubernetes-validate has no schemas for Kubernetes {version}")
    json.dump(findings, sys.stdout)


if __name__ == "__main__":
    _main()
