"""Argo CD for tests: the application-controller, repo-server and applicationset-controller built
by `make setup-gitops` (.tools/argocd-<version>, from the argo-cd Go module), run as processes of
this host against a cluster's API server with its kubeconfig, with Debian's redis-server, and a
read-only git server (`git daemon`) on 127.0.0.1 serving the repository they deploy from.

Why host processes and not pods: the repo-server runs `git` and `helm` (the project's pinned one),
which an image would have to carry (nothing is pulled here, so it would be built and imported
first); as processes they use the binaries already built, reach redis, each other and the git
server on 127.0.0.1, and the API server at the cluster's own address. This is how Argo CD's own
developers run it (its Procfile: `ARGOCD_FAKE_IN_CLUSTER=true` makes the in-cluster destination
`https://kubernetes.default.svc` use KUBECONFIG). The notifications controller (same binary) runs
on demand (`start_notifications`) in the node's network namespace: it serves its metrics on every
address, which there is a namespace the test made. What an install adds on top (Deployments,
Services, RBAC, the API server and UI, dex) is left out; the CRDs and the ConfigMaps/Secrets come
from the same module (`manifests/crds`, `manifests/base/config`, `manifests/base/notification`).

    with GitDaemon(bare_repos_dir) as git, ArgoCD(cluster, work_dir) as argocd:
        argocd.install()                      # CRDs + argocd-cm & co in namespace argocd
        argocd.start()                        # redis, repo-server, controllers
        argocd.app("ml-service-dev")          # the Application object
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from pathlib import Path

import yaml

from .cluster import Cluster, ClusterError, wait_until
from .kube import mk_value
from .net import free_port
from .procs import spawn, stop_group, tail

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
NAMESPACE = "argocd"


def argocd_version() -> str:
    return mk_value("ARGOCD_VERSION", "gitops")


def module_dir() -> Path:
    """The argo-cd module in the Go module cache (`make setup-gitops` downloaded it)."""
    cache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    path = Path(cache) / f"github.com/argoproj/argo-cd/v3@{argocd_version()}"
    if not (path / "manifests" / "crds").is_dir():
        raise ClusterError(f"{path} missing: run `make setup-gitops`")
    return path


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class ProcessExitedError(RuntimeError):
    """An Argo CD process (or redis) exited while the test needed it."""


class GitDaemon:
    """`git daemon` on 127.0.0.1 (a free port), read-only, exporting every repository under
    `base`: `git://127.0.0.1:<port>/<name>.git`."""

    def __init__(self, base: Path, log_dir: Path) -> None:
        self.base, self.log = Path(base), Path(log_dir) / "git-daemon.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> GitDaemon:
        self.proc = spawn(
            ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
             f"--base-path={self.base}", "--listen=127.0.0.1", f"--port={self.port}",
             str(self.base)],
            log_path=self.log,
        )  # fmt: skip
        wait_until(lambda: _listening(self.port), 30, "git daemon listening", interval=0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_group(self.proc)


class ArgoCD:
    """Argo CD's controllers and repo-server as host processes against `cluster`."""

    def __init__(self, cluster: Cluster, work_dir: Path, env: dict[str, str] | None = None):
        self.cluster, self.dir = cluster, Path(work_dir)
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        names = ("redis", "repo", "repo-metrics", "controller-metrics", "appset-metrics",
                 "appset-probe", "appset-webhook", "notifications-metrics")  # fmt: skip
        self.ports = {n: free_port() for n in names}
        self.extra_env = env or {}

    # ------------------------------------------------------------------ install
    def install(self, config: dict[str, str] | None = None) -> None:
        """Namespace, CRDs and the base ConfigMaps/Secret of the module's manifests; `config`
        is merged into argocd-cm."""
        mod = module_dir()
        self.cluster.create_namespace(NAMESPACE, restricted=False)
        for crd in sorted((mod / "manifests" / "crds").glob("*-crd.yaml")):
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd),
                                 timeout=300)  # fmt: skip
        for crd in ("applications", "appprojects", "applicationsets"):
            wait_until(lambda crd=crd: self._established(f"crd/{crd}.argoproj.io"), 120,
                       f"CRD {crd}.argoproj.io established", interval=0.5)  # fmt: skip
        docs = []
        base = mod / "manifests" / "base"
        notification = sorted((base / "notification").glob("argocd-notifications-[cs]*.yaml"))
        for path in [*sorted((base / "config").glob("argocd-*.yaml")), *notification]:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.cluster.apply(docs, namespace=NAMESPACE)
        if config:
            self.cluster.kubectl("-n", NAMESPACE, "patch", "configmap", "argocd-cm", "--type",
                                 "merge", "-p", json.dumps({"data": config}))  # fmt: skip
        # `default` exists in every install (the API server creates it at start; none runs here).
        self.cluster.apply([{
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                     "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]},
        }])  # fmt: skip

    def _established(self, crd: str) -> bool:
        conditions = self.cluster.get(crd).get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    # ------------------------------------------------------------------ processes
    def _env(self) -> dict[str, str]:
        home = self.dir / "home"
        for sub in ("home", "tmp", "tls", "ssh", "gpg", "bin"):
            (self.dir / sub).mkdir(exist_ok=True)
        # The scripts Argo CD's image puts in /usr/local/bin next to its binaries: the repo-server
        # runs git-verify-wrapper.sh on every revision it renders.
        for script in ("git-verify-wrapper.sh", "gpg-wrapper.sh"):
            shutil.copy(module_dir() / "hack" / script, self.dir / "bin" / script)
            (self.dir / "bin" / script).chmod(0o755)
        system = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        path = f"{self.dir / 'bin'}:{TOOLS_BIN}:{system}"
        return {
            "PATH": path, "HOME": str(home), "TMPDIR": str(self.dir / "tmp"), "LANG": "C",
            "KUBECONFIG": str(self.cluster.kubeconfig),
            # the in-cluster destination (https://kubernetes.default.svc) uses KUBECONFIG
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "ARGOCD_TLS_DATA_PATH": str(self.dir / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(self.dir / "ssh"),
            "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_GNUPGHOME": str(self.dir / "gpg"),
            # its own socket (the default /tmp path would be shared with any other repo-server)
            "ARGOCD_ASK_PASS_SOCK": str(self.dir / "askpass.sock"),
            "ARGOCD_PLUGINSOCKFILEPATH": str(self.dir / "plugins"),
            # git must never prompt or read the user's configuration
            "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
            **self.extra_env,
        }  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {**self._env(), "ARGOCD_BINARY_NAME": name}
        self.procs[name] = spawn(argv, log_path=self.logs / f"{name}.log", env=env, cwd=self.dir)

    def start(self) -> None:
        p = self.ports
        redis = shutil.which("redis-server")
        if redis is None:
            raise ClusterError("redis-server missing: run `make setup-gitops`")
        bin_ = lambda name: str(TOOLS_BIN / name)  # noqa: E731
        self._spawn("redis", [redis, "--bind", "127.0.0.1", "--port", str(p["redis"]), "--save",
                              "", "--appendonly", "no", "--dir", str(self.dir)])  # fmt: skip
        wait_until(lambda: self._alive("redis") and _listening(p["redis"]), 30, "redis up", 0.2)
        redis_addr = f"127.0.0.1:{p['redis']}"
        repo_addr = f"127.0.0.1:{p['repo']}"
        self._spawn("argocd-repo-server", [
            bin_("argocd-repo-server"), "--address", "127.0.0.1", "--port", str(p["repo"]),
            "--metrics-port", str(p["repo-metrics"]), "--redis", redis_addr,
            # plain gRPC on 127.0.0.1 (the default mTLS CA path would contradict --disable-tls)
            "--disable-tls", "--client-ca-path", "",
            "--loglevel", "info",
        ])  # fmt: skip
        self._spawn("argocd-application-controller", [
            bin_("argocd-application-controller"), "--namespace", NAMESPACE,
            "--redis", redis_addr, "--repo-server", repo_addr, "--repo-server-plaintext",
            "--metrics-port", str(p["controller-metrics"]), "--loglevel", "info",
        ])  # fmt: skip
        self._spawn("argocd-applicationset-controller", [
            bin_("argocd-applicationset-controller"), "--namespace", NAMESPACE,
            "--argocd-repo-server", repo_addr, "--repo-server-plaintext",
            "--metrics-addr", f"127.0.0.1:{p['appset-metrics']}",
            "--probe-addr", f"127.0.0.1:{p['appset-probe']}",
            "--webhook-addr", f"127.0.0.1:{p['appset-webhook']}", "--loglevel", "info",
        ])  # fmt: skip
        wait_until(
            lambda: all(self._alive(n) for n in self.procs)
            and _listening(p["repo"])
            and _listening(p["controller-metrics"])
            and _listening(p["appset-probe"]),
            120, "Argo CD processes listening", interval=0.5, diag=self.log_tails,
        )  # fmt: skip

    def start_notifications(self, in_netns) -> None:
        """The notifications controller (argocd-notifications-cm / -secret of the namespace),
        its command wrapped by `in_netns` (LocalCluster.in_netns: the node's namespace, where the
        API server's address is local and the controller's 0.0.0.0 metrics listener stays)."""
        name = "argocd-notifications"
        self._spawn(name, in_netns(
            str(TOOLS_BIN / name), "--namespace", NAMESPACE,
            # never called here (the templates use no repo.* function), but required
            "--argocd-repo-server", f"127.0.0.1:{self.ports['repo']}",
            "--argocd-repo-server-plaintext", "--metrics-port",
            str(self.ports["notifications-metrics"]), "--loglevel", "info", "--logformat", "text",
        ))  # fmt: skip
        wait_until(lambda: self._alive(name) and "loading configuration" in self.log_text(name),
                   60, "notifications controller started", interval=0.5,
                   diag=self.log_tails)  # fmt: skip

    def _alive(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            # not a ClusterError: wait_until retries those, a dead process fails at once
            raise ProcessExitedError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
        return True

    def check_alive(self) -> None:
        for name in self.procs:
            self._alive(name)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            stop_group(self.procs[name])
        self.procs.clear()

    def __enter__(self) -> ArgoCD:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ diagnostics
    def log_tail(self, name: str, chars: int = 3000) -> str:
        return tail(self.logs / f"{name}.log", chars)

    def log_tails(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {n} ---\n{self.log_tail(n, chars)}" for n in self.procs)

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    # ------------------------------------------------------------------ objects
    def app(self, name: str) -> dict:
        return self.cluster.get("application", name, namespace=NAMESPACE)

    def app_state(self, name: str) -> tuple[str, str]:
        """(sync status, health status) of an Application ("" when it does not exist)."""
        proc = self.cluster.kubectl("get", "application", name, "-n", NAMESPACE, "-o", "json",
                                    "--ignore-not-found", check=False)  # fmt: skip
        if proc.returncode != 0 or not proc.stdout.strip():
            return "", ""
        status = json.loads(proc.stdout).get("status", {})
        return status.get("sync", {}).get("status", ""), status.get("health", {}).get("status", "")

    def wait_app(self, name: str, sync: str, health: str, timeout: float = 300) -> dict:
        def reached():
            self.check_alive()
            return self.app_state(name) == (sync, health)

        wait_until(reached, timeout, f"Application {name} {sync}/{health}", interval=2,
                   diag=lambda: self.describe(name))  # fmt: skip
        return self.app(name)

    def describe(self, name: str) -> str:
        proc = self.cluster.kubectl("get", "applications", "-n", NAMESPACE, "-o",
                                    "custom-columns=NAME:.metadata.name,SYNC:.status.sync.status,"
                                    "HEALTH:.status.health.status,OP:.status.operationState.phase",
                                    check=False)  # fmt: skip
        one = self.cluster.kubectl("get", "application", name, "-n", NAMESPACE, "-o", "json",
                                   check=False).stdout  # fmt: skip
        try:
            status = json.loads(one).get("status", {})
            keys = ("conditions", "operationState", "sync", "health")
            detail = json.dumps({k: status.get(k) for k in keys}, indent=1)
        except ValueError:
            detail = one
        return f"{proc.stdout}\n{name}: {detail[-4000:]}\n{self.log_tails(1500)}"

    def sync(self, name: str, user: str = "release-manager") -> None:
        """Request a manual sync, as `argocd app sync NAME` does through the API server (which
        does not run here): it sets the Application's `operation`; the controller runs it (and
        applies the project's sync windows to it)."""
        op = {"operation": {"initiatedBy": {"username": user},
                            "sync": {"syncStrategy": {"hook": {}}}}}  # fmt: skip
        self.cluster.kubectl("-n", NAMESPACE, "patch", "application", name, "--type", "merge",
                             "-p", json.dumps(op))  # fmt: skip

    def uninstall(self) -> None:
        """Delete every Application/ApplicationSet/AppProject (finalizers removed first: the
        controllers are stopped), the namespace and the CRDs."""
        for kind in ("applicationsets", "applications", "appprojects"):
            names = self.cluster.kubectl("get", kind, "-n", NAMESPACE, "-o", "name",
                                         check=False).stdout.split()  # fmt: skip
            for obj in names:
                self.cluster.kubectl("-n", NAMESPACE, "patch", obj, "--type", "merge", "-p",
                                     '{"metadata": {"finalizers": null}}', check=False)  # fmt: skip
            if names:
                self.cluster.kubectl("-n", NAMESPACE, "delete", *names, "--wait=true",
                                     "--timeout=60s", check=False, timeout=90)  # fmt: skip
        self.cluster.delete_namespace(NAMESPACE)
        for crd in ("applications", "applicationsets", "appprojects"):
            self.cluster.kubectl("delete", f"crd/{crd}.argoproj.io", "--ignore-not-found",
                                 check=False, timeout=120)  # fmt: skip
