"""The repository deploys the platform: argocd/apps/mlflow-platform.yaml renders
charts/mlflow-platform the way Argo CD's repo-server does, its AppProject admits exactly what it
renders, and every environment's `mlflow.trackingUri` is that release's Service. (tests/gitops
validates every Argo CD object, this one included, against Argo CD's own CRD schemas.)"""

from __future__ import annotations

from functools import cache

import pytest
import yaml
from support import kube

ROOT = kube.ROOT
APP_FILE = ROOT / "argocd" / "apps" / "mlflow-platform.yaml"
ENVIRONMENTS = ("dev", "staging", "prod")


def load_all(path) -> list[dict]:
    return kube.load_documents(path.read_text())


def application() -> dict:
    (app,) = load_all(APP_FILE)
    return app


def project(name: str) -> dict:
    found = [p for p in load_all(ROOT / "argocd" / "apps" / "projects.yaml")
             if p["metadata"]["name"] == name]  # fmt: skip
    assert len(found) == 1, f"AppProject {name} defined {len(found)} times"
    return found[0]


@cache
def synced() -> tuple[dict, ...]:
    """`helm template` as the repo-server runs it for this Application, minus helm test hooks."""
    app = application()
    src, dest = app["spec"]["source"], app["spec"]["destination"]
    args = ["template", ".", "--name-template", src["helm"]["releaseName"],
            "--namespace", dest["namespace"], "--include-crds"]  # fmt: skip
    proc = kube.run_helm(args, cwd=ROOT / src["path"])
    assert proc.returncode == 0, proc.stderr
    docs = kube.load_documents(proc.stdout)
    hooks = [d for d in docs if "test" in (d["metadata"].get("annotations") or {}).get(
        "helm.sh/hook", "")]  # fmt: skip
    return tuple(d for d in docs if d not in hooks)


def test_application_deploys_the_chart_from_this_repository():
    app = application()
    proj = project(app["spec"]["project"])["spec"]
    src, dest = app["spec"]["source"], app["spec"]["destination"]
    assert src["repoURL"] in proj["sourceRepos"]
    assert (ROOT / src["path"] / "Chart.yaml").is_file()
    assert src["targetRevision"] == "main"
    assert {"server": dest["server"], "namespace": dest["namespace"]} in proj["destinations"]
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]
    # No inline values: credentials and settings live in the chart's defaults and Secrets.
    assert set(src["helm"]) == {"releaseName"}


def test_project_admits_exactly_the_rendered_kinds():
    proj = project(application()["spec"]["project"])["spec"]
    allowed = {(k["group"], k["kind"]) for k in proj["namespaceResourceWhitelist"]}
    rendered = {(d["apiVersion"].rpartition("/")[0], d["kind"]) for d in synced()}
    assert rendered == allowed, f"rendered {sorted(rendered)} vs allowed {sorted(allowed)}"
    assert proj["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]
    namespace = application()["spec"]["destination"]["namespace"]
    assert {d["metadata"]["namespace"] for d in synced()} == {namespace}


def test_no_secret_is_synced():
    assert not [d for d in synced() if d["kind"] == "Secret"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_points_at_the_platform_service(env: str):
    app = application()
    (svc,) = [d for d in synced() if d["kind"] == "Service" and d["metadata"]["name"]
              == app["spec"]["source"]["helm"]["releaseName"]]  # fmt: skip
    port = svc["spec"]["ports"][0]["port"]
    expected = (
        f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{port}"
    )
    values = yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())
    assert values["mlflow"]["trackingUri"] == expected
    # Proxied artifacts: the app's Secret carries MLflow credentials only (docs/mlflow-platform.md).
    assert values["mlflow"]["existingSecret"] == "mlflow-credentials"
    chart = yaml.safe_load((ROOT / "charts/mlflow-platform/values.yaml").read_text())
    assert f"ml-service-{env}" in chart["networkPolicy"]["clientNamespaces"]
    assert chart["mlflow"]["artifactsMode"] == "proxied"
