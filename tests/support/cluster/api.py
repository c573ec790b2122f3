"""What tests do with a cluster, whichever kind it is (the local one this harness starts, or any
cluster a KUBECONFIG points at: kind, minikube, a real one).

    cluster.kubectl("get", "nodes")                        # CompletedProcess; raises on failure
    cluster.apply(manifest_text_or_docs, namespace=...)    # server-side apply
    cluster.rollout(namespace, "deployment/x")             # waits for `rollout status`
    cluster.helm("install", ...)                           # the project's pinned helm
    with cluster.http(namespace, "pod/x", 8000) as base:   # http://<pod ip>:8000 or a port-forward
    result = cluster.run_pod(namespace, "client", image, ["python", "-c", ...])  # logs + exit code
    cluster.import_images(refs, docker_env)                # make locally built images runnable
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import poll
from ..kube import helm_env
from ..net import free_port
from .config import DEFAULT_BIN_DIR, TOOLS

RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
# Pod and container security settings every helper pod uses (restricted Pod Security Standard).
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


# Waiting reasons that no amount of waiting fixes (no image pull is ever possible here).
STUCK_REASONS = {
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
}


class ClusterError(AssertionError):
    """A cluster command failed; the message carries its output."""


@dataclass
class PodResult:
    name: str
    phase: str
    exit_code: int | None
    logs: str


# Polling for cluster state: a ClusterError from the predicate means "not yet", the timeout is one.
wait_until = functools.partial(poll.wait_until, retry=(ClusterError,), error=ClusterError)


class Cluster:
    """Operations on a cluster through its kubeconfig (subclasses add how images get in)."""

    kubeconfig: Path
    #: True when the test process can open TCP connections to pod IPs directly.
    pod_network_reachable: bool = False

    def __init__(self, kubeconfig: Path, kubectl: Path | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        built = DEFAULT_BIN_DIR / "kubectl"
        self._kubectl = Path(kubectl) if kubectl else built

    # ------------------------------------------------------------------ commands
    def env(self) -> dict[str, str]:
        env = helm_env()
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def _run(
        self,
        tool: Path,
        args: tuple[str, ...],
        *,
        input: str | None,
        check: bool,
        timeout: float,
        show_stdout: bool,
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(tool), *args], input=input, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            out = f"{proc.stdout[-3000:]}\n" if show_stdout else ""
            raise ClusterError(
                f"{tool.name} {' '.join(args)} failed ({proc.returncode}):\n"
                f"{out}{proc.stderr[-4000:]}"
            )
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return self._run(self._kubectl, args, input=input, check=check, timeout=timeout,
                         show_stdout=False)  # fmt: skip

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        return self._run(TOOLS / "bin" / "helm", args, input=None, check=check, timeout=timeout,
                         show_stdout=True)  # fmt: skip

    def get(self, *args: str, namespace: str | None = None) -> dict[str, Any]:
        """`kubectl get ... -o json`, parsed."""
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.kubectl("get", *args, *ns, "-o", "json").stdout)

    def exists(self, kind_name: str, namespace: str | None = None) -> bool:
        ns = ["-n", namespace] if namespace else []
        proc = self.kubectl("get", kind_name, *ns, "--ignore-not-found", "-o", "name", check=False)
        return bool(proc.stdout.strip())

    def apply(self, manifest: str | Path | Sequence[dict], namespace: str | None = None) -> None:
        """Server-side apply of YAML text, a file, or a list of objects."""
        if isinstance(manifest, Path):
            text = manifest.read_text()
        elif isinstance(manifest, str):
            text = manifest
        else:
            text = yaml.safe_dump_all(list(manifest))
        ns = ["-n", namespace] if namespace else []
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=mlsk", *ns, "-f", "-",
            input=text, timeout=300,
        )  # fmt: skip

    def create_namespace(self, name: str, *, restricted: bool = True, labels=None) -> None:
        """A namespace (enforcing the restricted Pod Security Standard unless told otherwise)."""
        all_labels = {**(RESTRICTED_LABELS if restricted else {}), **(labels or {})}
        self.apply([{"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "labels": all_labels}}])  # fmt: skip

    def delete_namespace(self, name: str, timeout: float = 180) -> None:
        self.kubectl(
            "delete", "namespace", name, "--ignore-not-found", "--wait=true",
            f"--timeout={int(timeout)}s", timeout=timeout + 30,
        )  # fmt: skip

    def rollout(self, namespace: str, kind_name: str, timeout: float = 300) -> None:
        """`kubectl rollout status` until done; ClusterError with the pods' state if not, at once
        when a pod of the namespace is stuck for good (an image that cannot be had, a missing
        Secret or ConfigMap)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.kubectl(
                "rollout", "status", kind_name, "-n", namespace, "--timeout=5s",
                check=False, timeout=60,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            stuck = self.stuck_pods(namespace)
            if stuck or time.monotonic() > deadline:
                why = f"stuck: {stuck}" if stuck else proc.stderr.strip()
                raise ClusterError(
                    f"rollout of {namespace}/{kind_name} did not finish ({why})\n"
                    + self.describe_pods(namespace)
                )

    def stuck_pods(self, namespace: str) -> dict[str, str]:
        """Pods whose containers wait for something that will not come by itself."""
        out = {}
        for pod in self.pods(namespace):
            statuses = pod["status"].get("containerStatuses", []) + pod["status"].get(
                "initContainerStatuses", []
            )
            for status in statuses:
                reason = (status.get("state", {}).get("waiting") or {}).get("reason", "")
                if reason in STUCK_REASONS:
                    out[pod["metadata"]["name"]] = reason
        return out

    def pods(self, namespace: str, selector: str | None = None) -> list[dict]:
        args = ["pods"] + (["-l", selector] if selector else [])
        return self.get(*args, namespace=namespace)["items"]

    def describe_pods(self, namespace: str) -> str:
        """Pods, their container states and the namespace's recent events, for failure messages."""
        out = self.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        events = self.kubectl(
            "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
        ).stdout
        nodes = self.kubectl(
            "get", "nodes", "-o",
            "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key", check=False,
        ).stdout  # fmt: skip
        return f"pods in {namespace}:\n{out}\nevents:\n{events[-4000:]}\nnodes:\n{nodes}"

    def logs(self, namespace: str, target: str, *extra: str) -> str:
        return self.kubectl("logs", "-n", namespace, target, *extra, check=False).stdout

    # ------------------------------------------------------------------ reaching pods
    def pod_ip(self, namespace: str, pod: str) -> str:
        ip = self.get("pod", pod, namespace=namespace)["status"].get("podIP")
        if not ip:
            raise ClusterError(f"pod {namespace}/{pod} has no IP yet")
        return ip

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int) -> Iterator[int]:
        """`kubectl port-forward` of `target` (pod/x, svc/x) to a free 127.0.0.1 port."""
        local = free_port()
        log = Path(tempfile.mkstemp(prefix="port-forward-", suffix=".log")[1])
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(self._kubectl), "port-forward", "-n", namespace, "--address", "127.0.0.1",
                 target, f"{local}:{port}"],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise ClusterError(f"port-forward {target} exited: {log.read_text()[-2000:]}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", local), timeout=1),
                ):
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(f"port-forward {target} did not listen: {log.read_text()}")
                time.sleep(0.2)
            yield local
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.unlink(missing_ok=True)

    @contextlib.contextmanager
    def http(self, namespace: str, target: str, port: int) -> Iterator[str]:
        """A base URL for `target`'s `port`: the pod IP when this process can reach the pod
        network (a pod target), else a port-forward."""
        if self.pod_network_reachable and target.startswith("pod/"):
            yield f"http://{self.pod_ip(namespace, target[4:])}:{port}"
            return
        with self.port_forward(namespace, target, port) as local:
            yield f"http://127.0.0.1:{local}"

    # ------------------------------------------------------------------ client pods
    def start_pod(
        self,
        namespace: str,
        name: str,
        image: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        pull_policy: str = "IfNotPresent",
        resources: dict | None = None,
    ) -> None:
        """Create a run-to-completion pod (restricted security context, /tmp an emptyDir)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": RESTRICTED_POD,
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": pull_policy,
                        "command": command,
                        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                        "securityContext": RESTRICTED_CONTAINER,
                        "resources": resources
                        or {
                            "requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            },
        }
        self.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        self.apply([pod])

    def wait_pod(self, namespace: str, name: str, timeout: float = 300) -> PodResult:
        """Wait for a pod to finish; its phase, exit code and logs."""

        def finished():
            pod = self.get("pod", name, namespace=namespace)
            return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

        pod = wait_until(
            finished, timeout, f"pod {namespace}/{name} finished", interval=1,
            diag=lambda: self.describe_pods(namespace),
        )  # fmt: skip
        state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
        code = (state.get("terminated") or {}).get("exitCode")
        return PodResult(name, pod["status"]["phase"], code, self.logs(namespace, f"pod/{name}"))

    def run_pod(self, namespace: str, name: str, image: str, command: list[str], *,
                timeout: float = 300, delete: bool = True, **kwargs) -> PodResult:  # fmt: skip
        self.start_pod(namespace, name, image, command, **kwargs)
        try:
            return self.wait_pod(namespace, name, timeout=timeout)
        finally:
            if delete:
                self.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found",
                             "--wait=false", check=False)  # fmt: skip

    # ------------------------------------------------------------------ images
    def import_images(self, refs: Sequence[str], docker_env: dict[str, str]) -> float:
        """Make images built in the Docker engine of `docker_env` runnable; seconds it took."""
        raise NotImplementedError


class ExternalCluster(Cluster):
    """A cluster the user already has (KUBECONFIG). Images reach it through the command in
    ML_SERVICE_E2E_LOAD (e.g. `kind load docker-image {image}`, `minikube image load {image}`, or
    with `{archive}`: a `docker save` tar); without it they must already be on the nodes."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(kubeconfig, kubectl=_external_kubectl())
        self.load_command = os.environ.get("ML_SERVICE_E2E_LOAD", "")

    def import_images(self, refs: Sequence[str], docker_env: dict[str, str]) -> float:
        start = time.monotonic()
        if not self.load_command:
            return 0.0
        for ref in refs:
            cmd = self.load_command
            if "{archive}" in cmd:
                archive = (
                    Path(tempfile.gettempdir()) / f"mlsk-{re.sub(r'[^A-Za-z0-9]', '_', ref)}.tar"
                )
                subprocess.run(
                    ["/usr/bin/docker", "save", "-o", str(archive), ref],
                    env=docker_env, check=True, timeout=600,
                )  # fmt: skip
                cmd = cmd.replace("{archive}", str(archive))
            proc = subprocess.run(
                ["bash", "-c", cmd.replace("{image}", ref)], env={**docker_env, **self.env()},
                capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            if "{archive}" in self.load_command:
                archive.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise ClusterError(f"loading {ref} with `{cmd}` failed:\n{proc.stderr[-3000:]}")
        return time.monotonic() - start


def _external_kubectl() -> Path | None:
    built = DEFAULT_BIN_DIR / "kubectl"
    if built.exists():
        return built
    import shutil

    found = shutil.which("kubectl")
    return Path(found) if found else built
