"""GitOps stays honest when the analysis aborts a canary (docs/canary.md, "When a canary is
aborted"), with a real Argo CD v3.6.1 (tests/support/argocd.py) and the real Argo Rollouts
controller and Prometheus of the tier. staging, delivering by canary with its own values, is the
Application the real ApplicationSet generates from a clone of this repository served by a
`git daemon`; only staging is released in the clone (dev and prod would only add their syncs), and
the AppProjects and the ApplicationSet are applied directly (the platform Applications of
argocd/bootstrap.yaml are test_5_gitops.py's: the platform is already installed here). It
runs before test_5_gitops.py, which leaves the tier's images on the node only under the adopted
names and hands the platform to its own Argo CD.

1. staging runs version 2. A version trained on a resampled data set passes the quality gate
   against it (`scripts/gitops.py release --env staging`: straight to staging, as the tool
   allows) and its pull request is merged; under a steady in-cluster stream Argo CD syncs, the
   canary starts, and the analysis alone aborts it on the model checks (the shifted class
   balance, or the score distribution that moves with it): the Application
   is Synced and Degraded (Argo CD's built-in Rollout health), every pod back on version 2, not one
   request failed; the figures (time to abort, requests the canary served) are printed.
2. `champion`: the trigger that moves it (argocd/install/argocd-notifications-cm.patch.yaml),
   evaluated by Argo CD's own notifications engine (`argocd admin notifications trigger run`) on
   the aborted Application, does not fire; on the same Application once healthy, it does.
3. Argo Rollouts' notification (argocd/install/argo-rollouts-notification-cm.yaml as written, its
   GitHub URL pointed at a stand-in) carries what was aborted and the analysis results; the
   canary-aborted workflow's command (`gitops.py rollback staging --aborted`, `gh` the FAKE
   tests/gitops/fake_gh.py) opens the pull request that restores the previous release.yaml, with
   those results in its body.
4. `gitops.py promote staging prod` is refused while staging is Degraded; once the revert is
   merged staging is Healthy again at once (the stable pod template: nothing to roll), and the
   promotion passes its rollout check.

What the test changes in its clone, each in a commit of its own: staging sized for one 2-CPU node
without an ingress controller, and its canary analysis sized for a test (lib.FAST_CANARY);
staging's first release.yaml; Argo CD polling shortened (what a GitHub webhook does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.argocd import NAMESPACE as ARGOCD_NS
from support.argocd import ArgoCD, GitDaemon
from support.cluster import Cluster, LocalCluster, wait_until
from support.gitrepo import adopted_clone, run_git

from .conftest import CanaryModels, InClusterMlflow, chart_image
from .lib import (
    FAST_CANARY,
    ROOT,
    SUMMARY,
    abort_under_load,
    has_rollouts,
    measurements,
    report_canary,
    served_versions,
    wait_rollout,
)

ENV, NS = "staging", "ml-service-staging"
APP = f"ml-service-{ENV}"
GITHUB_REPO = "acme/ml-service"
IMAGE_REPOSITORY = chart_image().rsplit(":", 1)[0]
FAKE_GH = ROOT / "tests" / "gitops" / "fake_gh.py"
ARGOCD_ENV = {
    "ARGOCD_RECONCILIATION_TIMEOUT": "10s",
    "ARGOCD_APPLICATIONSET_CONTROLLER_REQUEUE_AFTER": "5s",
}
SMALL_NODE = {"ingress": {"enabled": False},
              "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}},
              # 3 pods, so the steps are one pod, then two (staging's HPA allows 2-4)
              "autoscaling": {"minReplicas": 3, "maxReplicas": 3}}  # fmt: skip
# GitHub's API cannot be reached: this stand-in answers what Argo Rollouts' webhook sends
# (POST /repos/<owner>/<name>/dispatches with the token of the notification Secret) with 204, and
# prints each one as a JSON line for the test to read; anything else is refused.
GITHUB_STANDIN = r"""
import hmac, json, os, re, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
TOKEN = os.environ["TOKEN"]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        ok_path = re.fullmatch(r"/repos/[^/]+/[^/]+/dispatches", self.path)
        sent = self.headers.get("Authorization", "")
        status = 404 if not ok_path else 401
        if ok_path and hmac.compare_digest(sent.encode(), f"Bearer {TOKEN}".encode()):
            body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 65536))
            print(json.dumps({"path": self.path, "body": json.loads(body)}), flush=True)
            status = 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
STANDIN_NS = "github-standin"
MODEL_CHECKS = ("class-share", "score-psi")
HTTP_CHECKS = ("rejected-share", "error-share", "latency-p95")


@dataclass
class Staging:
    cluster: LocalCluster
    registry: InClusterMlflow
    argocd: ArgoCD
    work: Path
    tmp: Path
    env: dict[str, str]

    def git(self, *args: str) -> str:
        return run_git(self.work, *args)

    def gitops(self, *args: str, uri: str | None = None) -> subprocess.CompletedProcess:
        """scripts/gitops.py of the clone, as the workflows run it (CI=true, gh on PATH)."""
        env = {**self.env, **(self.registry.env(uri) if uri else {})}
        return subprocess.run(
            [sys.executable, "scripts/gitops.py", *args], cwd=self.work, env=env,
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    def merge(self) -> None:
        """Merge the open pull request of gitops/staging into main (a reviewer's merge)."""
        self.git("fetch", "--quiet", "origin")
        self.git("merge", "--quiet", "--no-ff", f"origin/gitops/{ENV}", "-m", "Merge gitops")
        self.git("push", "--quiet", "origin", "main")

    def prs(self) -> list[dict]:
        state = self.tmp / "gh.json"
        return json.loads(state.read_text())["prs"] if state.exists() else []

    def application(self) -> dict:
        return self.argocd.app(APP)

    def dispatches(self) -> list[dict]:
        logs = self.cluster.logs(STANDIN_NS, "pod/github")
        return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def commit_values(work: Path, env: str, values: dict, message: str) -> None:
    path = work / "environments" / env / "values.yaml"
    doc = yaml.safe_load(path.read_text())

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(doc, values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_git(work, "commit", "--quiet", "-am", message)


def reader_kubeconfig(cluster: LocalCluster, work: Path, tmp: Path) -> Path:
    """A kubeconfig for the promotion reader ServiceAccount (docs/gitops.md, step 9)."""
    cluster.apply(work / "argocd" / "install" / "promotion-reader.yaml")
    token = cluster.kubectl("create", "token", "ml-service-promotion-reader", "-n", ARGOCD_NS,
                            "--duration", "1h").stdout.strip()  # fmt: skip
    path = tmp / "promotion-reader.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "reader",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.config.api_server,
            "certificate-authority": str(cluster.pki.crt("ca"))}}],
        "users": [{"name": "reader", "user": {"token": token}}],
        "contexts": [{"name": "reader", "context": {"cluster": "c", "user": "reader"}}],
    }))  # fmt: skip
    denied = subprocess.run(
        [str(cluster.config.bin_dir / "kubectl"), "--kubeconfig", str(path), "get", "secrets",
         "-n", ARGOCD_NS], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "forbidden" in denied.stderr, "the reader reads only that"
    return path


@pytest.fixture(scope="module")
def staging(
    cluster: Cluster, mlflow_registry: InClusterMlflow, app_image: str, prometheus: str,
    tmp_path_factory,
):  # fmt: skip
    if not isinstance(cluster, LocalCluster):
        pytest.skip("Argo CD runs as host processes next to the local cluster; not on a "
                    "KUBECONFIG cluster")  # fmt: skip
    if not has_rollouts(cluster):
        pytest.skip("staging delivers by canary and this cluster has no Argo Rollouts")
    tmp = tmp_path_factory.mktemp("canary-gitops")
    served_dir, work, bin_dir = tmp / "served", tmp / "work", tmp / "bin"
    served_dir.mkdir()
    bin_dir.mkdir()
    start = time.monotonic()
    (bin_dir / "gh").write_text(f"#!{sys.executable}\n" + FAKE_GH.read_text())
    (bin_dir / "gh").chmod(0o755)
    env = {
        **os.environ,
        # kubectl: `promote` reads the source environment's Application
        "PATH": os.pathsep.join([str(bin_dir), str(ROOT / ".tools" / "bin"),
                                 str(cluster.config.bin_dir), os.environ["PATH"]]),
        "FAKE_GH_LOG": str(tmp / "gh.log"), "FAKE_GH_STATE": str(tmp / "gh.json"),
        "CI": "true", "GIT_TERMINAL_PROMPT": "0",
    }  # fmt: skip
    token = os.urandom(16).hex()
    with GitDaemon(served_dir, tmp) as git_server:
        url = git_server.url("ml-service.git")
        adopted_clone(work, served_dir / "ml-service.git", url, GITHUB_REPO)
        commit_values(work, ENV, SMALL_NODE, "test: sized for one 2-CPU node, no ingress")
        commit_values(work, ENV, FAST_CANARY, "test: staging's canary analysis sized for a test")
        chart_commit = run_git(work, "rev-parse", "HEAD")
        digest = cluster.tag_image(app_image, IMAGE_REPOSITORY, chart_commit)
        (work / "environments" / ENV / "release.yaml").write_text(yaml.safe_dump({
            "revision": chart_commit,
            "image": {"repository": IMAGE_REPOSITORY, "tag": chart_commit, "digest": digest},
            "model": {"name": "ml-service", "version": mlflow_registry.v2.version},
        }, sort_keys=False))  # fmt: skip
        run_git(work, "add", "-A")
        run_git(work, "commit", "--quiet", "-m", f"release: model v2 in {ENV}")
        run_git(work, "push", "--quiet", "origin", "main")
        argocd = ArgoCD(cluster, tmp / "argocd", env=ARGOCD_ENV)
        story = Staging(cluster, mlflow_registry, argocd, work, tmp, env)
        try:
            cluster.create_namespace(NS)
            cluster.kubectl("create", "secret", "docker-registry", "ghcr-pull", "-n", NS,
                            f"--docker-server={IMAGE_REPOSITORY.split('/')[0]}",
                            "--docker-username=unused", "--docker-password=unused")  # fmt: skip
            mlflow_registry.create_credentials(cluster, NS)
            # The GitHub stand-in, and Argo Rollouts' notification configuration as written, its
            # URL the stand-in's (the only substitution), its token in the Secret the docs name.
            cluster.create_namespace(STANDIN_NS)
            cluster.start_pod(STANDIN_NS, "github", app_image,
                              ["python", "-c", GITHUB_STANDIN], env={"TOKEN": token},
                              labels={"app": "github"})  # fmt: skip
            cluster.apply([{"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "github", "namespace": STANDIN_NS},
                            "spec": {"selector": {"app": "github"},
                                     "ports": [{"port": 80, "targetPort": 8080}]}}])  # fmt: skip
            notify = yaml.safe_load(
                (work / "argocd" / "install" / "argo-rollouts-notification-cm.yaml").read_text()
            )
            service = "service.webhook.github-dispatch"
            standin_url = f"http://github.{STANDIN_NS}.svc.cluster.local"
            notify["data"][service] = notify["data"][service].replace(
                "https://api.github.com", standin_url
            )
            cluster.apply([notify], namespace="argo-rollouts")
            cluster.apply([{"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "argo-rollouts-notification-secret"},
                            "stringData": {"github-dispatch-token": token}}],
                          namespace="argo-rollouts")  # fmt: skip
            argocd.install()
            argocd.start()
            cluster.kubectl("-n", ARGOCD_NS, "patch", "configmap", "argocd-cm", "--type", "merge",
                            "--patch-file", str(work / "argocd" / "install" /
                                                "argocd-cm.patch.yaml"))  # fmt: skip
            for name in ("projects.yaml", "applicationset.yaml"):
                cluster.apply(work / "argocd" / "apps" / name, namespace=ARGOCD_NS)
            # `promote` reads Applications as the promote job does: with the promotion reader's
            # token (argocd/install/promotion-reader.yaml), which may get them and nothing else
            story.env["KUBECONFIG"] = str(reader_kubeconfig(cluster, work, tmp))
            argocd.wait_app(APP, "Synced", "Healthy", timeout=420)
            wait_rollout(cluster, NS, ("Healthy",), timeout=300)
            SUMMARY["canary gitops: clone, Argo CD up, staging Synced/Healthy"] = (
                f"{time.monotonic() - start:.1f} s"
            )
            yield story
        finally:
            argocd.stop()
            argocd.uninstall()
            cluster.delete_namespace(NS)
            cluster.delete_namespace(STANDIN_NS)
            cluster.kubectl("delete", "configmap", "-n", "argo-rollouts",
                            "argo-rollouts-notification-configmap", "--ignore-not-found",
                            check=False)  # fmt: skip
            cluster.kubectl("patch", "secret", "argo-rollouts-notification-secret", "-n",
                            "argo-rollouts", "--type", "json", "-p",
                            '[{"op": "remove", "path": "/data/github-dispatch-token"}]',
                            check=False)  # fmt: skip


def trigger_fires(story: Staging, trigger: str) -> bool:
    """Argo CD's notifications engine on the live Application: does `trigger` of
    argocd/install/argocd-notifications-cm.patch.yaml fire?"""
    patch = yaml.safe_load(
        (story.work / "argocd" / "install" / "argocd-notifications-cm.patch.yaml").read_text()
    )
    config = story.tmp / "argocd-notifications-cm.yaml"
    config.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "argocd-notifications-cm"},
                                      "data": patch["data"]}))  # fmt: skip
    app = story.tmp / "application.json"
    app.write_text(json.dumps(story.application()))
    proc = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "argocd"), "admin", "notifications", "trigger", "run",
         trigger, str(app), "--config-map", str(config), "--secret", ":empty"],
        capture_output=True, text=True, timeout=120, check=False, env=story.env,
    )  # fmt: skip
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert proc.returncode == 0 and rows, proc.stdout + proc.stderr
    return all(row[-1] == "true" for row in rows)


# The release, its canary and the abort take minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_an_aborted_canary_leaves_staging_degraded_on_the_stable_version(
    staging: Staging, canary_models: CanaryModels, app_image: str
) -> None:
    story, cluster = staging, staging.cluster
    shifted, stable = canary_models.class_shift.version, story.registry.v2.version
    head = story.git("rev-parse", "HEAD")
    digest = cluster.tag_image(app_image, IMAGE_REPOSITORY, head)

    def release() -> None:
        with story.registry.tracking_uri(cluster) as uri:
            proc = story.gitops("release", "--env", ENV, "--image-repository", IMAGE_REPOSITORY,
                                "--tag", head, "--digest", digest, "--model-version", shifted,
                                uri=uri)  # fmt: skip
        # the quality gate passed it: the offline scores do not see the shift
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "quality gate passed" in proc.stderr, proc.stderr
        story.merge()

    seconds, result, run, tree = abort_under_load(
        cluster, NS, app_image, release, shifted, stable, pods=3
    )
    report_canary(f"staging under Argo CD: class-shifted version (v{shifted}) aborted", seconds,
                  result, run)  # fmt: skip
    SUMMARY["canary: class-shifted version, requests served by the canary"] = (
        f"{result.versions.get(shifted, 0)} of {result.sent}"
    )
    checks = measurements(run)
    # the model's checks stopped it (the class shares, or the score distribution the shift
    # moves with them: whichever has failed twice first), not the HTTP ones
    assert {c for c in MODEL_CHECKS if checks[c][0] == "Failed"}, (checks, tree)
    assert all(checks[c][0] != "Failed" for c in HTTP_CHECKS), checks
    # Argo CD: Synced (the cluster is what git pins) and Degraded (the Rollout's built-in health)
    story.argocd.wait_app(APP, "Synced", "Degraded", timeout=120)
    # Argo CD 3 keeps each resource's health in its resource tree: the Application's names the
    # resource that degrades it
    health = story.application()["status"]["health"]
    assert health["message"] == f"Caused by argoproj.io/Rollout:{NS}/ml-service", health
    assert set(served_versions(cluster, NS).values()) == {stable}


def test_champion_does_not_move_on_an_aborted_release(staging: Staging) -> None:
    assert staging.argocd.app_state(APP)[1] == "Degraded"
    assert not trigger_fires(staging, "on-ml-service-deployed")


def test_the_abort_notification_opens_the_revert_pull_request(
    staging: Staging, canary_models: CanaryModels
) -> None:
    story = staging
    shifted = canary_models.class_shift.version
    dispatches = wait_until(story.dispatches, 60, "Argo Rollouts' notification at the stand-in",
                            interval=2)  # fmt: skip
    ((sent,),) = [dispatches]
    assert sent["path"] == f"/repos/{GITHUB_REPO}/dispatches"
    assert sent["body"]["event_type"] == "ml-service-canary-aborted"
    payload = sent["body"]["client_payload"]
    assert payload["namespace"] == NS and payload["model"] == f"models:/ml-service/{shifted}"
    failed = {
        m["name"] for r in payload["analysis"] for m in r["metrics"] if m["phase"] == "Failed"
    }
    assert failed and failed <= set(MODEL_CHECKS), payload
    # what canary-aborted.yml runs with the event's payload
    notification = story.tmp / "aborted.json"
    notification.write_text(json.dumps(payload))
    before = yaml.safe_load(story.git("show", "HEAD~1:environments/staging/release.yaml"))
    proc = story.gitops("rollback", ENV, "--aborted", str(notification))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pr = story.prs()[-1]
    assert pr["title"] == f"revert({ENV}): canary of model ml-service v{shifted} aborted"
    # why (the failed AnalysisRun's message: the Rollout the controller sends predates the abort)
    # and the analysis results
    assert any(f'Metric "{check}" assessed Failed' in payload["message"] for check in failed)
    first = pr["body"].splitlines()[0]
    assert payload["message"] in first and "replicas" not in first, first
    for check in failed:
        assert f"| {check} | Failed |" in pr["body"], pr["body"]
    story.git("fetch", "--quiet", "origin")
    proposed = yaml.safe_load(
        story.git("show", f"origin/gitops/{ENV}:environments/{ENV}/release.yaml")
    )
    assert proposed["model"] == before["model"] and proposed["image"] == before["image"]


def test_promotion_waits_until_staging_runs_its_release_healthily(staging: Staging) -> None:
    story = staging
    refused = story.gitops("promote", ENV, "prod")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"staging is Degraded (Caused by argoproj.io/Rollout:{NS}/ml-service)" in refused.stderr
    # the revert merged: back on the stable pod template at once, nothing to roll
    start = time.monotonic()
    story.merge()
    story.argocd.wait_app(APP, "Synced", "Healthy", timeout=300)
    SUMMARY["canary gitops: revert merged -> staging Synced/Healthy"] = (
        f"{time.monotonic() - start:.1f} s"
    )
    assert set(served_versions(story.cluster, NS).values()) == {story.registry.v2.version}
    # the trigger that would move champion fires on a healthy deployment (not a vacuous check)
    assert trigger_fires(story, "on-ml-service-deployed")
    with story.registry.tracking_uri(story.cluster) as uri:
        proc = story.gitops("promote", ENV, "prod", "--no-pr", uri=uri)
    assert proc.returncode == 0, proc.stdout + proc.stderr
