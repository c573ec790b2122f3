"""The GitOps flow on the cluster, with a real Argo CD v3.6 (its application-controller,
repo-server and applicationset-controller as processes of this host, redis from Debian:
tests/support/argocd.py says why) reading a clone of this repository from a git server on
127.0.0.1, exactly as docs/gitops.md sets it up:

1. adopt (`make adopt REPO=acme/ml-service REPO_URL=git://127.0.0.1:<port>/ml-service.git`);
2. the Secrets of step 5 and Argo CD's `argocd-cm` patch of step 3;
3. `kubectl apply -n argocd -f argocd/bootstrap.yaml` (step 7): the AppProjects, the platform
   (MLflow, already installed by this tier's `mlflow_registry` fixture with the same chart and
   values: Argo CD adopts it without a restart) and the ApplicationSet come up in their sync
   waves; dev and staging reach Synced/Healthy on their own, prod stays OutOfSync;
4. a promotion end to end: `scripts/gitops.py release` (what release.yml runs; `gh` is the FAKE
   tests/gitops/fake_gh.py, the GitHub API cannot be reached), the PR merged → Argo CD syncs dev →
   `/model` of dev's pods shows the new version; `promote dev prod` refused; `promote dev staging`
   merged → staging serves it; `promote staging prod` merged → prod stays OutOfSync until its
   manual sync, which Argo CD runs only inside prod's sync window.

What the test changes in its clone, each in a commit of its own (visible in `story`):
- SUBSTITUTE: kube-prometheus-stack cannot be rendered here (Helm repositories are unreachable).
  Its Application keeps its name, project, wave and sync policy, but its source becomes a one-
  ConfigMap stand-in chart in this repository (tests/cluster/argocd/kube-prometheus-stack), and
  the `platform` project admits this repository. The cluster already runs the prometheus-operator
  with the ServiceMonitor/PrometheusRule CRDs (the tier's own add-on). Nothing else is replaced.
- SMALL NODE: one node with 2 CPUs holds the platform, the add-ons and all three environments:
  staging and prod request 100m CPU per pod instead of 250m/500m, and the Ingresses are off (no
  ingress controller here; Argo CD reports an Ingress without an address as Progressing).
- FIRST RELEASES: release.yaml of every environment pins model version 1 and the image, as after
  a first release and two promotions (tests/gitops does the same); the image is the tier's
  ml-service image, given the names a registry push would (repository:<commit> and @digest).
- Argo CD polling made short for the test (ARGOCD_RECONCILIATION_TIMEOUT, the ApplicationSet
  requeue): what a webhook from GitHub does in production (docs/gitops.md, step 12).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support.argocd import NAMESPACE as ARGOCD_NS
from support.argocd import ArgoCD, GitDaemon
from support.cluster import Cluster, LocalCluster, wait_until
from support.gitrepo import adopted_clone, run_git

from .conftest import InClusterMlflow, chart_image
from .lib import (
    CANARY_LOAD,
    FAST_CANARY,
    ROOT,
    SUMMARY,
    InClusterLoad,
    deployment_pods,
    get_json,
    measure,
)

ENVS = ("dev", "staging", "prod")
GITHUB_REPO = "acme/ml-service"
# what release.yml pushes to (the chart's default image.repository)
IMAGE_REPOSITORY = chart_image().rsplit(":", 1)[0]
STANDIN = "tests/cluster/argocd/kube-prometheus-stack"
SMALL_NODE = {
    "dev": {"ingress": {"enabled": False}},
    "staging": {"ingress": {"enabled": False},
                "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}}},
    "prod": {"ingress": {"enabled": False},
             "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}}},
}  # fmt: skip
# staging and prod deliver by canary: their analysis sized for a test, one step (half the pods)
# here (every step, and aborts, are test_4's and test_6's). prod is synced once only: its first
# revision, which a Rollout takes at once.
FAST_CANARY_ONE_STEP = {
    **FAST_CANARY,
    "delivery": {"canary": {**FAST_CANARY["delivery"]["canary"], "weights": [50]}},
}
# Argo CD settings of this test's install (an install's defaults poll every 3 minutes)
ARGOCD_ENV = {
    "ARGOCD_RECONCILIATION_TIMEOUT": "10s",  # app resync and the repo-server's revision cache
    "ARGOCD_APPLICATIONSET_CONTROLLER_REQUEUE_AFTER": "5s",  # the git generator's poll
}
FAKE_GH = ROOT / "tests" / "gitops" / "fake_gh.py"


@dataclass
class Story:
    cluster: LocalCluster
    registry: InClusterMlflow
    argocd: ArgoCD
    work: Path  # the clone CI works in (origin = the repository the git server serves)
    tmp: Path
    image_digest: str
    env: dict[str, str] = field(default_factory=dict)
    prs: int = 0

    def git(self, *args: str) -> str:
        return run_git(self.work, *args)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def gitops(self, *args: str, uri: str) -> subprocess.CompletedProcess:
        """scripts/gitops.py of the clone, as the workflows run it (CI=true, gh on PATH)."""
        env = {**self.env, **self.registry.env(uri)}
        return subprocess.run(
            [sys.executable, "scripts/gitops.py", *args], cwd=self.work, env=env,
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    def merge(self, env: str) -> str:
        """Merge the open pull request of gitops/<env> into main (what a reviewer does)."""
        self.git("fetch", "--quiet", "origin")
        self.prs += 1
        self.git("merge", "--quiet", "--no-ff", f"origin/gitops/{env}", "-m",
                 f"Merge pull request #{self.prs} from gitops/{env}")  # fmt: skip
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")


def served(cluster: Cluster, ns: str) -> dict[str, str]:
    """Model version on /model of every Ready server pod of an environment."""
    out = {}
    for pod in deployment_pods(cluster, ns):
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions") or [])  # fmt: skip
        if not ready or pod["metadata"].get("deletionTimestamp"):
            continue
        with cluster.http(ns, f"pod/{pod['metadata']['name']}", 8000) as base:
            status, body = get_json(f"{base}/model")
        out[pod["metadata"]["name"]] = str(body.get("version")) if status == 200 else str(status)
    return out


def wait_served(story: Story, env: str, version: str, timeout: float = 300) -> dict[str, str]:
    ns = f"ml-service-{env}"

    def only_new():
        story.argocd.check_alive()
        versions = served(story.cluster, ns)
        pods = deployment_pods(story.cluster, ns)
        return versions if versions and set(versions.values()) == {version} and len(
            versions) == len(pods) else None  # fmt: skip

    return wait_until(only_new, timeout, f"{env} serves only version {version}", interval=3,
                      diag=lambda: story.argocd.describe(f"ml-service-{env}"))  # fmt: skip


def prod_window_open(projects: Path, now: dt.datetime) -> bool:
    """Whether prod's sync window (argocd/apps/projects.yaml: `0 9 * * 1-4`, 7h, UTC) is open."""
    docs = [d for d in yaml.safe_load_all(projects.read_text()) if d]
    project = next(d for d in docs if d["metadata"]["name"] == "ml-service")
    (window,) = project["spec"]["syncWindows"]
    assert (window["kind"], window["schedule"], window["duration"], window["timeZone"]) == (
        "allow", "0 9 * * 1-4", "7h", "UTC"), window  # fmt: skip
    return now.isoweekday() in (1, 2, 3, 4) and 9 <= now.hour < 16


def edit_yaml(path: Path, edit) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        edit(doc)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


@pytest.fixture(scope="module")
def story(cluster: Cluster, mlflow_registry: InClusterMlflow, app_image: str, tmp_path_factory):
    if not isinstance(cluster, LocalCluster):
        pytest.skip("Argo CD runs as host processes next to the local cluster (and the release "
                    "images are named in its containerd); not on a KUBECONFIG cluster")  # fmt: skip
    tmp = tmp_path_factory.mktemp("gitops")
    served_dir, work = tmp / "served", tmp / "work"
    served_dir.mkdir()
    start = time.monotonic()
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(f"#!{sys.executable}\n" + FAKE_GH.read_text())
    (bin_dir / "gh").chmod(0o755)
    env = {
        **os.environ,
        # kubectl and the cluster's kubeconfig: `promote` reads the source's Application
        "PATH": os.pathsep.join([str(bin_dir), str(ROOT / ".tools" / "bin"),
                                 str(cluster.config.bin_dir), os.environ["PATH"]]),
        "KUBECONFIG": str(cluster.kubeconfig),
        "FAKE_GH_LOG": str(tmp / "gh.log"), "FAKE_GH_STATE": str(tmp / "gh.json"),
        "CI": "true", "GIT_TERMINAL_PROMPT": "0",
    }  # fmt: skip
    with GitDaemon(served_dir, tmp) as git_server:
        url = git_server.url("ml-service.git")
        # 1. Adopt, the way a user does (docs/gitops.md, step 1).
        adopted_clone(work, served_dir / "ml-service.git", url, GITHUB_REPO)
        # 2. The test's substitutions (module docstring), each a commit of its own.
        apps = work / "argocd" / "apps"

        def standin(doc):
            doc["spec"]["source"] = {"repoURL": url, "targetRevision": "main", "path": STANDIN,
                                     "helm": doc["spec"]["source"]["helm"]}  # fmt: skip

        def platform_repo(doc):
            if doc["metadata"]["name"] == "platform":
                doc["spec"]["sourceRepos"].append(url)

        edit_yaml(apps / "kube-prometheus-stack.yaml", standin)
        edit_yaml(apps / "projects.yaml", platform_repo)
        run_git(
            work,
            "commit",
            "--quiet",
            "-am",
            "test: kube-prometheus-stack from a local stand-in chart (no Helm repository here)",
        )
        for name, values in SMALL_NODE.items():
            path = work / "environments" / name / "values.yaml"
            doc = yaml.safe_load(path.read_text())
            for key, value in values.items():
                doc[key] = value
            if doc["delivery"]["strategy"] == "canary":
                doc["serviceMonitor"] = FAST_CANARY_ONE_STEP["serviceMonitor"]
                doc["delivery"]["canary"] |= FAST_CANARY_ONE_STEP["delivery"]["canary"]
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        run_git(work, "commit", "--quiet", "-am",
                "test: sized for one 2-CPU node, no ingress controller")  # fmt: skip
        chart_commit = run_git(work, "rev-parse", "HEAD")
        digest = cluster.tag_image(app_image, IMAGE_REPOSITORY, chart_commit)
        for name in ENVS:
            (work / "environments" / name / "release.yaml").write_text(yaml.safe_dump({
                "revision": chart_commit,
                "image": {"repository": IMAGE_REPOSITORY, "tag": chart_commit, "digest": digest},
                "model": {"name": "ml-service", "version": "1"},
            }, sort_keys=False))  # fmt: skip
        run_git(work, "add", "-A")
        run_git(work, "commit", "--quiet", "-m", "release: model v1 in dev, staging and prod")
        run_git(work, "push", "--quiet", "origin", "main")
        argocd = ArgoCD(cluster, tmp / "argocd", env=ARGOCD_ENV)
        story = Story(cluster, mlflow_registry, argocd, work, tmp, digest, env)
        try:
            # 3. Secrets before the first sync (step 5; the platform's exist already).
            for name in ENVS:
                ns = f"ml-service-{name}"
                cluster.create_namespace(ns)
                # the pull secret the values name (never used: the image is on the node)
                cluster.kubectl("create", "secret", "docker-registry", "ghcr-pull", "-n", ns,
                                f"--docker-server={IMAGE_REPOSITORY.split('/')[0]}",
                                "--docker-username=unused", "--docker-password=unused")  # fmt: skip
                mlflow_registry.create_credentials(cluster, ns)
            # Argo CD (step 3): its CRDs and configuration, its processes, then the patch.
            argocd.install()
            argocd.start()
            patch = work / "argocd" / "install" / "argocd-cm.patch.yaml"
            cluster.kubectl("-n", ARGOCD_NS, "patch", "configmap", "argocd-cm", "--type", "merge",
                            "--patch-file", str(patch))  # fmt: skip
            SUMMARY["gitops: clone, adopt, Argo CD up"] = f"{time.monotonic() - start:.1f} s"
            yield story
        finally:
            argocd.stop()
            argocd.uninstall()
            for name in ENVS:
                cluster.delete_namespace(f"ml-service-{name}")
            cluster.kubectl("delete", "configmap", "-n", "monitoring", "-l",
                            "app.kubernetes.io/instance=kube-prometheus-stack",
                            "--ignore-not-found", check=False)  # fmt: skip


def test_bootstrap_brings_up_the_platform_and_the_environments(story: Story) -> None:
    """Step 7: one object applied by hand; dev and staging Synced/Healthy on their own, prod
    generated but OutOfSync (no automated sync), nothing of it deployed."""
    argocd, cluster = story.argocd, story.cluster
    start = time.monotonic()
    cluster.kubectl("apply", "-n", ARGOCD_NS, "-f", str(story.work / "argocd" / "bootstrap.yaml"))
    for app in ("ml-service-bootstrap", "mlflow-platform", "kube-prometheus-stack"):
        argocd.wait_app(app, "Synced", "Healthy", timeout=300)
    with measure("gitops: bootstrap -> dev and staging Synced/Healthy"):
        for env in ("dev", "staging"):
            argocd.wait_app(f"ml-service-{env}", "Synced", "Healthy", timeout=420)
    SUMMARY["gitops: bootstrap applied -> dev, staging Synced/Healthy"] = (
        f"{time.monotonic() - start:.1f} s")  # fmt: skip
    for env in ("dev", "staging"):
        assert set(wait_served(story, env, "1").values()) == {"1"}
    prod = argocd.app("ml-service-prod")
    assert prod["status"]["sync"]["status"] == "OutOfSync"
    assert "automated" not in (prod["spec"].get("syncPolicy") or {})
    assert not deployment_pods(cluster, "ml-service-prod")
    # the platform Argo CD manages is the one the tier installed: adopted, not restarted
    (server,) = cluster.pods("mlflow", "app.kubernetes.io/instance=mlflow,"
                                       "app.kubernetes.io/component=server")  # fmt: skip
    assert server["status"]["containerStatuses"][0]["restartCount"] == 0


def test_sync_waves_ran_in_order(story: Story) -> None:
    """AppProjects (-2) before the platform Applications (-1) before the ApplicationSet (0), and
    the ApplicationSet only once the platform Applications were healthy (argocd-cm's Application
    health check): creation times of what the bootstrap Application created."""
    get = story.cluster.get

    def created(kind: str, name: str) -> dt.datetime:
        stamp = get(kind, name, namespace=ARGOCD_NS)["metadata"]["creationTimestamp"]
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    projects = [created("appproject", n) for n in ("ml-service", "platform", "mlflow-platform")]
    platform = [created("application", n) for n in ("mlflow-platform", "kube-prometheus-stack")]
    appset = created("applicationset", "ml-service")
    assert max(projects) <= min(platform) <= max(platform) <= appset
    for name in ("mlflow-platform", "kube-prometheus-stack"):
        healthy = get("application", name, namespace=ARGOCD_NS)["status"]["health"]
        since = healthy.get("lastTransitionTime")
        if since:
            assert dt.datetime.fromisoformat(since.replace("Z", "+00:00")) <= appset, (name, since)
    # what the app of apps manages (its last sync may have touched one object only: self-heal
    # syncs what is out of sync)
    boot = get("application", "ml-service-bootstrap", namespace=ARGOCD_NS)
    managed = {r["kind"] + "/" + r["name"]: r.get("status") for r in boot["status"]["resources"]}
    assert managed == {
        "AppProject/ml-service": "Synced", "AppProject/platform": "Synced",
        "AppProject/mlflow-platform": "Synced", "Application/mlflow-platform": "Synced",
        "Application/kube-prometheus-stack": "Synced", "ApplicationSet/ml-service": "Synced",
    }, managed  # fmt: skip


def test_promotion_end_to_end(story: Story, app_image: str) -> None:
    """release (dev) -> promote staging -> promote prod, each PR merged by hand; Argo CD moves
    dev and staging by itself, prod only by a manual sync inside its window; a skip is refused."""
    cluster, argocd, v2 = story.cluster, story.argocd, story.registry.v2.version
    with story.registry.tracking_uri(cluster) as uri:
        # what release.yml's bump-dev runs for a new commit: image <commit>@digest, model v2
        head = story.git("rev-parse", "HEAD")
        digest = cluster.tag_image(f"{IMAGE_REPOSITORY}:{story.git('rev-parse', 'HEAD~1')}",
                                   IMAGE_REPOSITORY, head)  # fmt: skip
        assert digest == story.image_digest, "the same image under a new tag"
        start = time.monotonic()
        proc = story.gitops("release", "--image-repository", IMAGE_REPOSITORY, "--tag", head,
                            "--digest", digest, "--model-version", v2, uri=uri)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        SUMMARY["gitops: release (quality gate + PR)"] = f"{time.monotonic() - start:.1f} s"
        story.merge("dev")
        with measure("gitops: release merged -> dev serves v2"):
            served_dev = wait_served(story, "dev", v2)
        argocd.wait_app("ml-service-dev", "Synced", "Healthy", timeout=120)
        assert set(served(cluster, "ml-service-staging").values()) == {"1"}

        # a promotion that skips staging: refused, nothing pushed
        proc = story.gitops("promote", "dev", "prod", uri=uri)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "skips staging" in proc.stderr
        assert not story.git("ls-remote", "origin", "refs/heads/gitops/prod")

        proc = story.gitops("promote", "dev", "staging", uri=uri)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # staging's canary is judged on live traffic: a steady stream while it rolls
        with (
            InClusterLoad(cluster, "ml-service-staging", app_image, **CANARY_LOAD) as load,
            measure("gitops: promotion merged -> staging serves v2 (canary)"),
        ):
            story.merge("staging")
            wait_served(story, "staging", v2, timeout=600)
            result = load.stop()
        assert result.failed == 0, result.errors
        argocd.wait_app("ml-service-staging", "Synced", "Healthy", timeout=120)

        proc = story.gitops("promote", "staging", "prod", uri=uri)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        story.merge("prod")

    # merged: Argo CD sees it (the Application's spec names v2) but does not sync prod
    def prod_names_v2():
        annotations = argocd.app("ml-service-prod")["metadata"].get("annotations") or {}
        return annotations.get("ml-service.io/model-version") == v2

    wait_until(prod_names_v2, 120, "ml-service-prod regenerated with v2")
    time.sleep(15)  # longer than the reconciliation period: an automated sync would have started
    prod = argocd.app("ml-service-prod")
    assert prod["status"]["sync"]["status"] == "OutOfSync"
    assert not prod["status"].get("operationState"), "nobody synced prod"
    assert not deployment_pods(cluster, "ml-service-prod")

    # `argocd app sync ml-service-prod`, docs/gitops.md step 14
    projects = story.work / "argocd" / "apps" / "projects.yaml"
    now = dt.datetime.now(dt.UTC)
    argocd.sync("ml-service-prod")
    if not prod_window_open(projects, now):
        # Outside Monday-Thursday 09:00-16:00 UTC: the controller holds the manual sync.
        def blocked():
            state = argocd.app("ml-service-prod")["status"].get("operationState") or {}
            return state.get("message") == "Sync operation blocked by sync window"

        wait_until(blocked, 120, "prod's manual sync blocked by its window", interval=2,
                   diag=lambda: argocd.describe("ml-service-prod"))  # fmt: skip
        assert not deployment_pods(cluster, "ml-service-prod")
        # This run's clock is outside the window, which the test cannot move: it moves the
        # window instead, by a commit to its clone (a team's PR), to open from 10 minutes ago.
        opened = now - dt.timedelta(minutes=10)

        def open_now(doc):
            if doc["metadata"]["name"] == "ml-service":
                doc["spec"]["syncWindows"][0].update(
                    schedule=f"{opened.minute} {opened.hour} * * *", duration="1h"
                )

        edit_yaml(projects, open_now)
        story.commit(f"test: prod's sync window moved to {opened:%H:%M} UTC (this run's clock)")
        SUMMARY["gitops: prod sync window"] = f"closed at {now:%a %H:%M} UTC; moved to open"
    else:
        SUMMARY["gitops: prod sync window"] = f"open at {now:%a %H:%M} UTC"
    with measure("gitops: prod manual sync -> prod serves v2"):
        # prod's first sync: the Rollout's first revision goes to 100 % at once, no canary
        argocd.wait_app("ml-service-prod", "Synced", "Healthy", timeout=420)
        served_prod = wait_served(story, "prod", v2)
    op = argocd.app("ml-service-prod")["status"]["operationState"]
    assert op["phase"] == "Succeeded" and op["operation"]["initiatedBy"]["username"]
    assert len(served_prod) == 3 and len(served_dev) == 1
