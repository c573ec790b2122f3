"""The repository deploys the platform: argocd/apps/mlflow-platform.yaml renders
charts/mlflow-platform the way Argo CD's repo-server does, its AppProject admits exactly what it
renders, every environment's `mlflow.trackingUri` is that release's Service, and the public name CI
trains through is routed, accepted as Host and admitted by the NetworkPolicy. (tests/gitops
validates every Argo CD object, this one included, against Argo CD's own CRD schemas.)"""

from __future__ import annotations

import json
import tempfile
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
    with tempfile.NamedTemporaryFile("w", suffix=".json") as values:
        json.dump(src["helm"].get("valuesObject", {}), values)
        values.flush()
        args = ["template", ".", "--name-template", src["helm"]["releaseName"], "--namespace",
                dest["namespace"], "--values", values.name, "--include-crds"]  # fmt: skip
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
    assert set(src["helm"]) == {"releaseName", "valuesObject"}
    # GHCR publishes a new package as private: the platform pulls as the environments do.
    environment = yaml.safe_load((ROOT / "environments" / "prod" / "values.yaml").read_text())
    assert src["helm"]["valuesObject"]["imagePullSecrets"] == environment["imagePullSecrets"]


def test_the_public_name_is_routed_accepted_and_admitted():
    """docs/gitops.md step 8: the Ingress routes each public name to the Service, MLflow accepts it
    as Host (else `403 Invalid Host header`), and the NetworkPolicy admits the ingress
    controller's namespace, over TLS from the issuer prod uses."""
    values = application()["spec"]["source"]["helm"]["valuesObject"]["expose"]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in synced()}
    ingress = by_kind[("Ingress", "mlflow")]
    routed = {
        r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ingress["spec"]["rules"]
    }
    assert routed == {h: {"name": "mlflow", "port": {"name": "http"}} for h in values["hosts"]}
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == values["hosts"]
    prod = yaml.safe_load((ROOT / "environments" / "prod" / "values.yaml").read_text())
    issuer = "cert-manager.io/cluster-issuer"
    assert ingress["metadata"]["annotations"][issuer] == prod["ingress"]["annotations"][issuer]
    (server,) = [d for d in synced() if d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in server["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in values["hosts"]:
        assert host in allowed and f"{host}:*" in allowed
    policy = by_kind[("NetworkPolicy", "mlflow")]
    peers = policy["spec"]["ingress"][0]["from"]
    admitted = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for p in peers if "namespaceSelector" in p]  # fmt: skip
    assert ingress["spec"]["ingressClassName"] == "nginx" and "ingress-nginx" in admitted
    assert prod["networkPolicy"]["allowedNamespaces"] == ["ingress-nginx"], "same controller"


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
