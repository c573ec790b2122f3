"""The GitOps flow on the cluster, from an empty Argo CD to a promotion and a rollback, with a real
Argo CD v3.6 (its application-controller, repo-server, applicationset-controller and notifications
controller as processes of this host, redis from Debian: tests/support/argocd.py says why) reading
a clone of this repository from a git server on 127.0.0.1, exactly as docs/gitops.md sets it up:

1. adopt (`make adopt REPO=acme/ml-service REPO_URL=git://127.0.0.1:<port>/ml-service.git`); the
   images are on the node only under the adopted names (ghcr.io/acme/ml-service[/mlflow-*]), what
   the release and platform-images workflows push: nothing under the template's placeholder names;
2. the Secrets of step 5 (the platform's are this tier's, its volumes keep the registry), Argo CD's
   `argocd-cm` and notifications patches of steps 3 and 6;
3. `kubectl apply -n argocd -f argocd/bootstrap.yaml` (step 7): the AppProjects, then the MLflow
   platform (its pods made by Argo CD from the adopted images) and the monitoring stand-in, then the
   ApplicationSet, in their sync waves; nothing released yet, so no environment;
4. step 8: the tracking server answers its public name through the exposure of the
   Application's values (a NodePort here) and refuses another Host; scripts/mlflow_users.py makes
   the users through it, and CI's user trains and registers through it from outside the cluster;
5. the first release (dev, staging, prod pin version 1): dev and staging Synced/Healthy serving it
   by themselves, prod OutOfSync until its manual sync, inside its sync window; then Argo CD
   Notifications tells GitHub (a FAKE receiver) and the champion-alias step, run as the champion
   user, moves `champion` to 1;
6. a promotion end to end: `scripts/gitops.py release` as CI (quality gate through the public name,
   `gh` the FAKE tests/gitops/fake_gh.py), the PR merged → dev serves 2; `promote dev prod` refused;
   staging, then prod (manual sync) serve 2 → `champion` 2; then prod rolled back (`gitops.py
   rollback prod`, merged, synced) → serves 1 → `champion` 1 again: one dispatch per deployment
   (1, 2, 1).

What the test changes in its clone, each in a commit of its own (visible in `story`):
- SUBSTITUTE: kube-prometheus-stack cannot be rendered here (Helm repositories are unreachable).
  Its Application keeps its name, project, wave and sync policy, but its source becomes a one-
  ConfigMap stand-in chart in this repository (tests/cluster/argocd/kube-prometheus-stack), and
  the `platform` project admits this repository. The cluster already runs the prometheus-operator
  with the ServiceMonitor/PrometheusRule CRDs (the tier's own add-on). Nothing else is replaced.
- NO INGRESS CONTROLLER: MLflow is exposed with the chart's NodePort option (its public name, the
  Host check and the NetworkPolicy source come from the same values) instead of the Ingress; the
  environments' Ingresses are off (Argo CD reports an Ingress without an address as Progressing).
  The public name resolves to the node for the processes that use it (their own /etc/hosts in a
  private mount namespace): what the DNS record does in production.
- SMALL NODE: one node with 2 CPUs holds the platform, the add-ons and all three environments:
  staging and prod request 100m CPU per pod instead of 250m/500m, and both roll (prod's three
  pods at once) instead of delivering by canary: the canary, which needs a steady stream to be
  judged on, is test_4's and test_5_canary_gitops.py's subject.
- RELEASES: release.yaml of every environment pins model version 1 and the image, as after a first
  release and two promotions (tests/gitops does the same); the image is the tier's ml-service image
  under the names a registry push makes resolvable (repository:<commit> and @digest).
- GitHub: Argo CD Notifications posts the repository_dispatch to a FAKE
  (tests/support/fake_github.py, its service URL substituted); the test runs the champion-alias
  workflow's step with the version it received. Argo CD polling is made short
  (ARGOCD_RECONCILIATION_TIMEOUT, the ApplicationSet requeue): what a webhook from GitHub does in
  production (docs/gitops.md, step 12).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support.argocd import NAMESPACE as ARGOCD_NS
from support.argocd import ArgoCD, GitDaemon
from support.cluster import Cluster, LocalCluster, wait_until
from support.cluster.images import platform_images as chart_platform_images
from support.gitrepo import run_git, snapshot_repo
from support.net import free_port
from support.procs import spawn, stop_group

from .conftest import InClusterMlflow
from .lib import ROOT, SUMMARY, deployment_pods, get_json, measure

ENVS = ("dev", "staging", "prod")
GITHUB_REPO = "acme/ml-service"
STANDIN = "tests/cluster/argocd/kube-prometheus-stack"
# staging and prod deliver by canary in their values; here they roll (the canary, its steps and
# aborts under Argo CD, are test_4's and test_5_canary_gitops.py's subject)
SMALL_NODE = {
    "dev": {"ingress": {"enabled": False}},
    "staging": {"ingress": {"enabled": False},
                "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}},
                "delivery": {"strategy": "rollingUpdate"}},
    "prod": {"ingress": {"enabled": False},
             "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}},
             "updateStrategy": {"maxSurge": 3, "maxUnavailable": 0},
             "delivery": {"strategy": "rollingUpdate"}},
}  # fmt: skip
NODE_PORT = 30500  # the NodePort of the tracking server (the node's own network namespace)
# Argo CD settings of this test's install (an install's defaults poll every 3 minutes)
ARGOCD_ENV = {
    "ARGOCD_RECONCILIATION_TIMEOUT": "10s",  # app resync and the repo-server's revision cache
    "ARGOCD_APPLICATIONSET_CONTROLLER_REQUEUE_AFTER": "5s",  # the git generator's poll
}
FAKE_GH = ROOT / "tests" / "gitops" / "fake_gh.py"
FAKE_GITHUB = ROOT / "tests" / "support" / "fake_github.py"
USERS = {"ci": "ml-service-ci", "champion": "ml-service-champion"}


@dataclass
class PublicName:
    """The tracking server's public name (expose.hosts[0] of the Application) routed to the
    exposure's address: processes run through `wrap` resolve it from their own /etc/hosts."""

    host: str
    address: str
    port: int
    hosts_file: Path

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wrap(self, *argv: str) -> list[str]:
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.hosts_file), *argv]  # fmt: skip

    def get(self, path: str, host: str, auth: tuple[str, str] | None = None):
        """(status, body) of GET `path` at the exposure's address with `Host: host`."""
        headers = {"Host": f"{host}:{self.port}"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        req = urllib.request.Request(f"http://{self.address}:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


@dataclass
class Story:
    cluster: LocalCluster
    registry: InClusterMlflow
    argocd: ArgoCD
    work: Path  # the clone CI works in (origin = the repository the git server serves)
    tmp: Path
    public: PublicName
    dispatch_log: Path  # what the FAKE GitHub received
    env: dict[str, str] = field(default_factory=dict)
    image_repository: str = ""  # the adopted ml-service image (release.yml's push target)
    image_tag: str = ""  # the commit the first release pins (its chart and its image)
    image_digest: str = ""
    users_dir: Path | None = None  # passwords written by scripts/mlflow_users.py
    merges: dict[str, str] = field(default_factory=dict)  # env -> last merge commit
    prs: int = 0

    def git(self, *args: str) -> str:
        return run_git(self.work, *args)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def user_env(self, role: str) -> dict[str, str]:
        """MLflow client settings of a user made by scripts/mlflow_users.py, on the public name."""
        user = USERS[role]
        return {"MLFLOW_TRACKING_URI": self.public.uri, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": (self.users_dir / user).read_text(),
                # downloads through the server, not presigned URLs to the in-cluster bucket
                "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}  # fmt: skip

    def run_public(self, argv: list[str], env: dict[str, str], timeout: float = 600):
        """A process outside the cluster reaching MLflow by its public name (CI's runner)."""
        return subprocess.run(
            self.public.wrap(*argv), cwd=self.work, env={**self.env, **env}, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def gitops(self, *args: str) -> subprocess.CompletedProcess:
        """The clone's scripts/gitops.py as the workflows run it (CI=true, gh on PATH, as CI)."""
        return self.run_public([sys.executable, "scripts/gitops.py", *args], self.user_env("ci"))

    def merge(self, env: str) -> str:
        """Merge the open pull request of gitops/<env> into main (what a reviewer does)."""
        self.git("fetch", "--quiet", "origin")
        self.prs += 1
        self.git("merge", "--quiet", "--no-ff", f"origin/gitops/{env}", "-m",
                 f"Merge pull request #{self.prs} from gitops/{env}")  # fmt: skip
        self.git("push", "--quiet", "origin", "main")
        self.merges[env] = self.git("rev-parse", "HEAD")
        return self.merges[env]

    def dispatches(self) -> list[dict]:
        if not self.dispatch_log.exists():
            return []
        return [json.loads(line) for line in self.dispatch_log.read_text().splitlines()]


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
    if window["schedule"] != "0 9 * * 1-4":
        return True  # moved to this run's clock by sync_prod
    assert (window["kind"], window["duration"], window["timeZone"]) == ("allow", "7h", "UTC")
    return now.isoweekday() in (1, 2, 3, 4) and 9 <= now.hour < 16


def edit_yaml(path: Path, edit) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        edit(doc)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def sync_prod(story: Story, version: str) -> dict[str, str]:
    """`argocd app sync ml-service-prod` (docs/gitops.md step 14): held by prod's sync window when
    the run is outside it (then the window is moved to the run's clock by a commit, as a team's PR
    would), then prod Synced/Healthy serving `version`."""
    argocd = story.argocd
    projects = story.work / "argocd" / "apps" / "projects.yaml"
    now = dt.datetime.now(dt.UTC)
    argocd.sync("ml-service-prod")
    if not prod_window_open(projects, now):

        def blocked():
            state = argocd.app("ml-service-prod")["status"].get("operationState") or {}
            return state.get("message") == "Sync operation blocked by sync window"

        wait_until(blocked, 120, "prod's manual sync blocked by its window", interval=2,
                   diag=lambda: argocd.describe("ml-service-prod"))  # fmt: skip
        assert not deployment_pods(story.cluster, "ml-service-prod")
        opened = now - dt.timedelta(minutes=10)

        def open_now(doc):
            if doc["metadata"]["name"] == "ml-service":
                doc["spec"]["syncWindows"][0].update(
                    schedule=f"{opened.minute} {opened.hour} * * *", duration="2h"
                )

        edit_yaml(projects, open_now)
        story.commit(f"test: prod's sync window moved to {opened:%H:%M} UTC (this run's clock)")
        SUMMARY["gitops: prod sync window"] = f"closed at {now:%a %H:%M} UTC; moved to open"
    elif "gitops: prod sync window" not in SUMMARY:
        SUMMARY["gitops: prod sync window"] = f"open at {now:%a %H:%M} UTC"
    argocd.wait_app("ml-service-prod", "Synced", "Healthy", timeout=420)
    prod = wait_served(story, "prod", version)
    op = argocd.app("ml-service-prod")["status"]["operationState"]
    assert op["phase"] == "Succeeded" and op["operation"]["initiatedBy"]["username"]
    return prod


def champion_follows_the_dispatch(story: Story, dispatches: int, version: str) -> None:
    """Argo CD Notifications' dispatch for prod arrives (one per deployment), then the step of
    champion-alias.yml runs with its version as the champion user: `champion` is `version`."""
    got = wait_until(lambda: len(story.dispatches()) >= dispatches and story.dispatches(), 120,
                     f"dispatch #{dispatches} from Argo CD Notifications", interval=1,
                     diag=lambda: story.argocd.log_tail("argocd-notifications"))  # fmt: skip
    assert len(got) == dispatches, got
    # remembered once per deployment: the key names the sync operation, revision and version
    app = story.argocd.app("ml-service-prod")
    finished = app["status"]["operationState"]["finishedAt"]
    notified = json.loads(app["metadata"]["annotations"]["notified.notifications.argoproj.io"])
    assert any(k.startswith(f"{finished}/") and f"/{version}:on-ml-service-deployed:" in k
               for k in notified), notified  # fmt: skip
    event = got[-1]
    assert event["path"] == f"/repos/{GITHUB_REPO}/dispatches"
    assert event["body"]["event_type"] == "ml-service-deployed"
    payload = event["body"]["client_payload"]
    assert payload == {"environment": "prod", "model": "ml-service", "version": version}
    workflow = yaml.safe_load((story.work / ".github/workflows/champion-alias.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["set-alias"]["steps"] if "set-alias" in s.get("run", "")]
    env = {**story.user_env("champion"), "VERSION": payload["version"]}
    proc = story.run_public(["bash", "-e", "-c", step["run"]], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, body = story.public.get(
        "/api/2.0/mlflow/registered-models/alias?name=ml-service&alias=champion",
        story.public.host, story.registry.admin,
    )  # fmt: skip
    assert status == 200 and body["model_version"]["version"] == version, (body, proc.stdout)


@pytest.fixture(scope="module")
def story(cluster: Cluster, mlflow_registry: InClusterMlflow, app_image: str,
          platform_images: dict[str, str], tmp_path_factory):  # fmt: skip
    if not isinstance(cluster, LocalCluster):
        pytest.skip("Argo CD runs as host processes next to the local cluster (and the release "
                    "images are named in its containerd); not on a KUBECONFIG cluster")  # fmt: skip
    tmp = tmp_path_factory.mktemp("gitops")
    served_dir, work = tmp / "served", tmp / "work"
    served_dir.mkdir()
    start = time.monotonic()
    snapshot_repo(work)
    os.symlink(ROOT / ".venv", work / ".venv")  # what the workflows' `make venv` makes
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
        "CI": "true", "GIT_TERMINAL_PROMPT": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }  # fmt: skip
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    with GitDaemon(served_dir, tmp) as git_server:
        url = git_server.url("ml-service.git")
        run_git(tmp, "init", "--quiet", "--bare", "-b", "main", str(served_dir / "ml-service.git"))
        run_git(work, "remote", "add", "origin", str(served_dir / "ml-service.git"))
        # 1. Adopt, the way a user does (docs/gitops.md, step 1).
        proc = subprocess.run(["make", "--no-print-directory", "adopt", f"REPO={GITHUB_REPO}",
                               f"REPO_URL={url}"], cwd=work, capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_git(work, "commit", "--quiet", "-am", f"Adopt: Argo CD reads {url}")
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
        run_git(work, "commit", "--quiet", "-am", "test: kube-prometheus-stack from a local "
                "stand-in chart (no Helm repository here)")  # fmt: skip

        def node_port(doc):
            expose = doc["spec"]["source"]["helm"]["valuesObject"]["expose"]
            expose["ingress"] = {"enabled": False}
            expose["service"] = {"type": "NodePort", "nodePort": NODE_PORT,
                                 "sourceRanges": [f"{cluster.config.host_ip}/32"]}  # fmt: skip

        edit_yaml(apps / "mlflow-platform.yaml", node_port)
        for name, values in SMALL_NODE.items():
            path = work / "environments" / name / "values.yaml"
            doc = yaml.safe_load(path.read_text())
            for key, value in values.items():
                doc[key] = value
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        run_git(work, "commit", "--quiet", "-am", "test: sized for one 2-CPU node, no ingress "
                "controller (MLflow on a NodePort)")  # fmt: skip
        run_git(work, "push", "--quiet", "origin", "main")
        (app,) = yaml.safe_load_all((apps / "mlflow-platform.yaml").read_text())
        host = app["spec"]["source"]["helm"]["valuesObject"]["expose"]["hosts"][0]
        hosts_file = tmp / "hosts"
        hosts_file.write_text(f"127.0.0.1 localhost\n{cluster.config.node_ip} {host}\n")
        public = PublicName(host, cluster.config.node_ip, NODE_PORT, hosts_file)
        argocd = ArgoCD(cluster, tmp / "argocd", env=ARGOCD_ENV)
        story = Story(cluster, mlflow_registry, argocd, work, tmp, public, tmp / "dispatches.log",
                      env)  # fmt: skip
        github = None
        try:
            # The tier's own platform release gives way to Argo CD; its Secrets and volumes stay
            # (the registry's rows and bucket), as on a cluster where step 5 made them.
            cluster.helm("uninstall", "mlflow", "-n", mlflow_registry.namespace, "--wait",
                         "--timeout", "3m")  # fmt: skip
            adopted_images_only(story, app_image, platform_images)
            # 3. Secrets before the first sync (step 5): the pull secret wherever Argo CD deploys
            # (never used: the images are on the node).
            for ns in (mlflow_registry.namespace, *(f"ml-service-{e}" for e in ENVS)):
                if ns != mlflow_registry.namespace:
                    cluster.create_namespace(ns)
                cluster.kubectl("create", "secret", "docker-registry", "ghcr-pull", "-n", ns,
                                "--docker-server=ghcr.io", "--docker-username=unused",
                                "--docker-password=unused")  # fmt: skip
            # Argo CD (step 3): its CRDs and configuration, its processes, then the patches.
            argocd.install()
            argocd.start()
            port = free_port()  # the FAKE GitHub's, in the node's network namespace
            for patch in ("argocd-cm", "argocd-notifications-cm"):
                text = (work / "argocd" / "install" / f"{patch}.patch.yaml").read_text()
                text = text.replace("url: https://api.github.com", f"url: http://127.0.0.1:{port}")
                cluster.kubectl("-n", ARGOCD_NS, "patch", "configmap", patch, "--type", "merge",
                                "-p", json.dumps(yaml.safe_load(text)))  # fmt: skip
            token = secrets.token_urlsafe(24)
            (tmp / "dispatch-token").write_text(token)
            secret = {"stringData": {"github-dispatch-token": token}}
            cluster.kubectl("-n", ARGOCD_NS, "patch", "secret", "argocd-notifications-secret",
                            "--type", "merge", "-p", json.dumps(secret))  # fmt: skip
            github = spawn(cluster.in_netns(sys.executable, str(FAKE_GITHUB), "--port", str(port),
                                            "--token-file", str(tmp / "dispatch-token"),
                                            "--log", str(story.dispatch_log)),
                           log_path=tmp / "fake-github.log")  # fmt: skip
            argocd.start_notifications(cluster.in_netns)
            SUMMARY["gitops: clone, adopt, Argo CD up"] = f"{time.monotonic() - start:.1f} s"
            yield story
        finally:
            argocd.stop()
            if github is not None:
                stop_group(github)
            argocd.uninstall()
            for name in ENVS:
                cluster.delete_namespace(f"ml-service-{name}")
            cluster.kubectl("delete", "configmap", "-n", "monitoring", "-l",
                            "app.kubernetes.io/instance=kube-prometheus-stack",
                            "--ignore-not-found", check=False)  # fmt: skip


def adopted_images_only(story: Story, app_image: str, built: dict[str, str]) -> None:
    """The built images, named on the node as the adopted clone names them (what the release and
    platform-images workflows push for acme/ml-service) and under no other name of this tier."""
    cluster, work = story.cluster, story.work
    values = yaml.safe_load((work / "charts" / "ml-service" / "values.yaml").read_text())
    story.image_repository = values["image"]["repository"]
    adopted = chart_platform_images(work / "charts" / "mlflow-platform")
    for target, ref in built.items():
        cluster.tag_image(ref, *adopted[target].rsplit(":", 1))
    story.image_tag = revision = story.git("rev-parse", "HEAD")
    story.image_digest = cluster.tag_image(app_image, story.image_repository, revision)
    # Every other name of these images goes (the template's placeholders, unless this checkout is
    # adopted already): a name the adopted clone misses would leave its pod in ErrImagePull.
    ours = {r.rsplit(":", 1)[0] for r in (app_image, *built.values())}
    for name in cluster.image_names():
        if name.split("@")[0].rsplit(":", 1)[0] in ours and not name.startswith(
            story.image_repository
        ):
            cluster.untag_image(name)
    names = cluster.image_names()
    assert set(adopted.values()) | {f"{story.image_repository}:{revision}"} <= set(names), names


def test_bootstrap_brings_up_the_platform_before_anything_is_released(story: Story) -> None:
    """Step 7: one object applied by hand; the platform comes up from the adopted images, and the
    ApplicationSet generates nothing while nothing is released."""
    argocd, cluster = story.argocd, story.cluster
    with measure("gitops: bootstrap applied -> platform Synced/Healthy"):
        bootstrap = story.work / "argocd" / "bootstrap.yaml"
        cluster.kubectl("apply", "-n", ARGOCD_NS, "-f", str(bootstrap))
        for app in ("ml-service-bootstrap", "mlflow-platform", "kube-prometheus-stack"):
            argocd.wait_app(app, "Synced", "Healthy", timeout=420)
        wait_until(lambda: cluster.exists("applicationset/ml-service", ARGOCD_NS), 120,
                   "ApplicationSet ml-service applied")  # fmt: skip
    time.sleep(10)  # two ApplicationSet polls: nothing to generate
    generated = cluster.get("applications", "-l", "app.kubernetes.io/part-of=ml-service",
                            namespace=ARGOCD_NS)["items"]  # fmt: skip
    assert not generated, [a["metadata"]["name"] for a in generated]
    adopted = chart_platform_images(story.work / "charts" / "mlflow-platform")
    pods = cluster.pods(story.registry.namespace, "app.kubernetes.io/instance=mlflow")
    images = {c["image"] for p in pods for c in p["spec"]["containers"] + p["spec"].get(
        "initContainers", [])}  # fmt: skip
    assert images == set(adopted.values()), images
    for pod in pods:
        assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}]


def test_sync_waves_ran_in_order(story: Story) -> None:
    """AppProjects (-2) before the platform Applications (-1) before the ApplicationSet (0):
    creation times of what the bootstrap Application created. (That wave 0 waited for the
    platform's health is not read back here: an Application's health may change again after the
    ApplicationSet exists, so its last transition time says nothing about the wait.)"""
    get = story.cluster.get

    def created(kind: str, name: str) -> dt.datetime:
        stamp = get(kind, name, namespace=ARGOCD_NS)["metadata"]["creationTimestamp"]
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    projects = [created("appproject", n) for n in ("ml-service", "platform", "mlflow-platform")]
    platform = [created("application", n) for n in ("mlflow-platform", "kube-prometheus-stack")]
    appset = created("applicationset", "ml-service")
    assert max(projects) <= min(platform) <= max(platform) <= appset
    # what the app of apps manages (its last sync may have touched one object only: self-heal
    # syncs what is out of sync)
    boot = get("application", "ml-service-bootstrap", namespace=ARGOCD_NS)
    managed = {r["kind"] + "/" + r["name"]: r.get("status") for r in boot["status"]["resources"]}
    assert managed == {
        "AppProject/ml-service": "Synced", "AppProject/platform": "Synced",
        "AppProject/mlflow-platform": "Synced", "Application/mlflow-platform": "Synced",
        "Application/kube-prometheus-stack": "Synced", "ApplicationSet/ml-service": "Synced",
    }, managed  # fmt: skip


def test_ci_reaches_mlflow_by_its_public_name(story: Story) -> None:
    """Step 8: the public name answers through the exposure (200), another Host is refused (403);
    the users are made through it (scripts/mlflow_users.py) and CI's user trains and registers
    from outside the cluster."""
    public, registry = story.public, story.registry
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert public.get(search, public.host, registry.admin)[0] == 200
    assert public.get(search, public.host)[0] == 401, "the name is accepted, a login required"
    for auth in (registry.admin, None):
        status, body = public.get(search, "mlflow.evil.example", auth)
        assert status == 403 and "Invalid Host header" in body, (status, body)
    story.users_dir = story.tmp / "mlflow-users"
    admin = {"MLFLOW_TRACKING_URI": public.uri, "MLFLOW_TRACKING_USERNAME": registry.admin[0],
             "MLFLOW_TRACKING_PASSWORD": registry.admin[1]}  # fmt: skip
    proc = story.run_public([sys.executable, "scripts/mlflow_users.py", "--out-dir",
                             str(story.users_dir)], admin)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = story.tmp / "train-ci.json"
    with measure("gitops: train + register through the public name (CI's user)"):
        proc = story.run_public([sys.executable, "-m", "ml_service.training", "--output-json",
                                 str(out)], story.user_env("ci"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a new version, after every one registered before (the tier's canary models among them)
    assert int(json.loads(out.read_text())["version"]) > int(registry.v2.version)


def test_first_release_serves_dev_and_staging_and_waits_for_prod(story: Story) -> None:
    """The first release (and two promotions) on main: the ApplicationSet generates the three
    environments; dev and staging Synced/Healthy serving version 1 by themselves, prod generated
    but OutOfSync (no automated sync), nothing of it deployed."""
    argocd, cluster = story.argocd, story.cluster
    for name in ENVS:
        ns = f"ml-service-{name}"
        user = f"ml-service-{name}"
        # step 8's users: the password from its file, never on the command line
        password = story.users_dir / user
        cluster.kubectl("create", "secret", "generic", "mlflow-credentials", "-n", ns,
                        f"--from-literal=MLFLOW_TRACKING_USERNAME={user}",
                        f"--from-file=MLFLOW_TRACKING_PASSWORD={password}")  # fmt: skip
        (story.work / "environments" / name / "release.yaml").write_text(yaml.safe_dump({
            "revision": story.image_tag,
            "image": {"repository": story.image_repository, "tag": story.image_tag,
                      "digest": story.image_digest},
            "model": {"name": "ml-service", "version": "1"},
        }, sort_keys=False))  # fmt: skip
    start = time.monotonic()
    story.commit("release: model v1 in dev, staging and prod")
    for env in ("dev", "staging"):
        argocd.wait_app(f"ml-service-{env}", "Synced", "Healthy", timeout=420)
    SUMMARY["gitops: first release pushed -> dev, staging Synced/Healthy"] = (
        f"{time.monotonic() - start:.1f} s")  # fmt: skip
    for env in ("dev", "staging"):
        assert set(wait_served(story, env, "1").values()) == {"1"}
    prod = argocd.app("ml-service-prod")
    assert prod["status"]["sync"]["status"] == "OutOfSync"
    assert "automated" not in (prod["spec"].get("syncPolicy") or {})
    assert not deployment_pods(cluster, "ml-service-prod")
    assert not story.dispatches(), "nothing deployed to prod: nothing sent"


def test_prod_synced_moves_champion(story: Story) -> None:
    """Step 14 with the first release: prod's manual sync → three pods serve 1 → Argo CD
    Notifications sends the dispatch → the champion-alias step moves `champion` to 1."""
    with measure("gitops: prod manual sync (first) -> prod serves v1"):
        assert len(sync_prod(story, "1")) == 3
    with measure("gitops: prod serves v1 -> champion v1 (notification + alias step)"):
        champion_follows_the_dispatch(story, 1, "1")


def test_promotion_end_to_end(story: Story) -> None:
    """release (dev) -> promote staging -> promote prod, each PR merged by hand; Argo CD moves
    dev and staging by itself, prod only by a manual sync; a skip is refused; `champion`
    follows prod."""
    cluster, argocd, v2 = story.cluster, story.argocd, story.registry.v2.version
    # what release.yml's bump-dev runs for a new commit: image <commit>@digest, model v2
    head = story.git("rev-parse", "HEAD")
    digest = cluster.tag_image(f"{story.image_repository}:{story.image_tag}",
                               story.image_repository, head)  # fmt: skip
    assert digest == story.image_digest, "the same image under a new tag"
    start = time.monotonic()
    proc = story.gitops("release", "--image-repository", story.image_repository, "--tag", head,
                        "--digest", digest, "--model-version", v2)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    SUMMARY["gitops: release (quality gate + PR)"] = f"{time.monotonic() - start:.1f} s"
    story.merge("dev")
    with measure("gitops: release merged -> dev serves v2"):
        served_dev = wait_served(story, "dev", v2)
    argocd.wait_app("ml-service-dev", "Synced", "Healthy", timeout=120)
    assert set(served(cluster, "ml-service-staging").values()) == {"1"}

    # a promotion that skips staging: refused, nothing pushed
    proc = story.gitops("promote", "dev", "prod")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "skips staging" in proc.stderr
    assert not story.git("ls-remote", "origin", "refs/heads/gitops/prod")

    proc = story.gitops("promote", "dev", "staging")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    story.merge("staging")
    with measure("gitops: promotion merged -> staging serves v2"):
        wait_served(story, "staging", v2)
    argocd.wait_app("ml-service-staging", "Synced", "Healthy", timeout=120)

    proc = story.gitops("promote", "staging", "prod")
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
    assert set(served(cluster, "ml-service-prod").values()) == {"1"}, "nobody synced prod"
    assert len(story.dispatches()) == 1, "merged, not deployed: nothing sent"

    with measure("gitops: prod manual sync -> prod serves v2"):
        served_prod = sync_prod(story, v2)
    assert len(served_prod) == 3 and len(served_dev) == 1
    champion_follows_the_dispatch(story, 2, v2)


def test_rollback_moves_champion_back(story: Story) -> None:
    """prod back to the version it served before (`gitops.py rollback prod`, its PR merged,
    synced): a new deployment, so a new dispatch, and `champion` follows (v1 -> v2 -> v1)."""
    proc = story.gitops("rollback", "prod")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    story.merge("prod")

    def prod_names_v1():
        annotations = story.argocd.app("ml-service-prod")["metadata"].get("annotations") or {}
        return annotations.get("ml-service.io/model-version") == "1"

    wait_until(prod_names_v1, 120, "ml-service-prod regenerated with v1")
    with measure("gitops: prod rollback sync -> prod serves v1"):
        sync_prod(story, "1")
    champion_follows_the_dispatch(story, 3, "1")
    assert [d["body"]["client_payload"]["version"] for d in story.dispatches()] == [
        "1", story.registry.v2.version, "1"]  # fmt: skip
