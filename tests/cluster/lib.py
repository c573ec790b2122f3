"""Helpers of the cluster tier: helm releases of the chart, an in-cluster load client, Prometheus
queries, "nothing left behind" checks, and the figures printed in the session summary."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.cluster import Cluster, ClusterError, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ml-service"
ENVIRONMENTS = ROOT / "environments"
RELEASE = "ml-service"
# Figures for the closing summary (build, start-up, rollout times...).
SUMMARY: dict[str, str] = {}


@contextlib.contextmanager
def measure(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        SUMMARY[what] = f"{time.monotonic() - start:.1f} s"


# What an environment's first release pins (scripts/gitops.py writes
# environments/<env>/release.yaml; none is on main before it): the chart's default image,
# registered model version 1.
FIRST_RELEASE = {"model": {"name": "ml-service", "version": "1"}}
_FIRST_RELEASE_FILE: list[Path] = []


def env_values(env: str) -> list[str]:
    """`-f` arguments in the order the ApplicationSet uses (values.yaml, then the promotable
    state: release.yaml, or FIRST_RELEASE while the environment has none)."""
    release = ENVIRONMENTS / env / "release.yaml"
    if not release.exists():
        if not _FIRST_RELEASE_FILE:
            fd, name = tempfile.mkstemp(prefix="mlsk-first-release-", suffix=".yaml")
            os.close(fd)
            Path(name).write_text(json.dumps(FIRST_RELEASE))
            _FIRST_RELEASE_FILE.append(Path(name))
        release = _FIRST_RELEASE_FILE[0]
    return ["-f", str(ENVIRONMENTS / env / "values.yaml"), "-f", str(release)]


def override_file(tmp_path: Path, name: str, values: dict) -> list[str]:
    """A values file written by the test (so the override is visible in the test's source)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(values, indent=2))
    return ["-f", str(path)]


def helm_install(
    cluster: Cluster, namespace: str, *args: str, timeout: str = "5m", check: bool = True
):
    return cluster.helm(
        "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", timeout, *args,
        check=check,
    )  # fmt: skip


def release_objects(cluster: Cluster, namespace: str, release: str = RELEASE) -> list[str]:
    """Every namespaced object labelled as part of `release` (all listable kinds)."""
    kinds = cluster.kubectl(
        "api-resources", "--verbs=list", "--namespaced", "-o", "name"
    ).stdout.split()
    # Events describe objects, they are not part of a release.
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = cluster.kubectl(
        "get", ",".join(kinds), "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
        "-o", "name", "--ignore-not-found", timeout=180,
    ).stdout  # fmt: skip
    return sorted(set(out.split()))


def uninstall_leaves_nothing(cluster: Cluster, namespace: str) -> None:
    """`helm uninstall --wait`, then no object of the release and no release record is left."""
    cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m")
    wait_until(
        lambda: not release_objects(cluster, namespace),
        120,
        f"every object of {RELEASE} in {namespace} gone",
        interval=2,
        diag=lambda: "\n".join(release_objects(cluster, namespace)),
    )
    secrets = cluster.kubectl(
        "get", "secrets", "-n", namespace, "-l", f"owner=helm,name={RELEASE}", "-o", "name"
    ).stdout.strip()
    assert not secrets, f"helm release records left: {secrets}"


def deployment_pods(cluster: Cluster, namespace: str) -> list[dict]:
    return cluster.pods(
        namespace, f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=server"
    )


def ready(pod: dict) -> bool:
    conditions = pod["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def served_versions(cluster: Cluster, ns: str) -> dict[str, str]:
    """Model version each Ready server pod reports."""
    out = {}
    for pod in deployment_pods(cluster, ns):
        name = pod["metadata"]["name"]
        if pod["metadata"].get("deletionTimestamp") or not ready(pod):
            continue
        with cluster.http(ns, f"pod/{name}", 8000) as base:
            status, body = get_json(f"{base}/ready")
        out[name] = body["model"]["version"] if status == 200 else f"not ready ({status})"
    return out


def get_json(url: str, timeout: float = 5) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def post_json(
    url: str, payload: dict, timeout: float = 10, auth: tuple[str, str] | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def sample_request() -> dict:
    return json.loads((CHART / "files" / "sample-request.json").read_text())


# ---------------------------------------------------------------------------- Prometheus
def prom_query(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = get_json(url, timeout=10)
    if status != 200 or body.get("status") != "success":
        raise ClusterError(f"Prometheus {path} answered {status}: {body}")
    return body["data"]


# ---------------------------------------------------------------------------- in-cluster load
# Runs in the ml-service image inside the cluster: POSTs ROWS rows per request to the Service by
# its DNS name at a fixed rate, a new connection per request (so kube-proxy picks an endpoint each
# time, as for any client), never retries, and stops at `max_seconds` or as soon as /tmp/stop
# exists. The rows: the sample request's row (stdlib only), or with NOISE rows of the breast-cancer
# data set (scikit-learn ships it in the image) with every feature scaled by a random factor in
# [1 - NOISE, 1 + NOISE], fixed seed: live traffic unlike the held-out split. Prints one JSON
# summary line at the end, with the model version of the last requests answered (`tail`), each
# failure's kind (`503`, `reset`: the connection reset or closed without an answer, `timeout`...)
# and, per second of the run, [answered 200, answered 503, other failures] by completion time.
LOAD_CLIENT = r"""
import collections, json, os, sys, threading, time, urllib.error, urllib.request
url, rate, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
max_seconds = float(sys.argv[4])
rows, noise = int(os.environ["ROWS"]), os.environ.get("NOISE")
if noise:
    import random, re
    from sklearn.datasets import load_breast_cancer
    data, rnd, noise = load_breast_cancer(), random.Random(0), float(noise)
    names = [re.sub(r"[^0-9a-zA-Z]+", "_", n).strip("_").lower() for n in data.feature_names]
    def row():
        values = data.data[rnd.randrange(len(data.data))]
        return {k: float(v) * rnd.uniform(1 - noise, 1 + noise) for k, v in zip(names, values)}
    bodies = [json.dumps({"instances": [row() for _ in range(rows)]}).encode() for _ in range(256)]
else:
    doc = json.loads(os.environ["BODY"])
    doc["instances"] = doc["instances"] * rows
    bodies = [json.dumps(doc).encode()]
lock = threading.Lock()
tail = collections.deque(maxlen=int(rate * 3) + 1)
stats = {"sent": 0, "ok": 0, "failed": 0, "errors": [], "versions": {}, "first_ok": None,
         "kinds": {}}
per_second = collections.defaultdict(lambda: [0, 0, 0])
start = time.monotonic()
def kind(e):
    if isinstance(e, urllib.error.HTTPError):
        return str(e.code)
    reason = getattr(e, "reason", e)  # URLError wraps the socket's error
    if isinstance(reason, ConnectionError):  # http.client.RemoteDisconnected is one too
        return "reset"
    if isinstance(reason, TimeoutError):
        return "timeout"
    return type(reason).__name__
def worker(k):
    i, offset = 0, k / rate
    while True:
        due = start + offset + i * threads / rate
        i += 1
        now = time.monotonic()
        if now - start > max_seconds or os.path.exists("/tmp/stop"):
            return
        if due > now:
            time.sleep(due - now)
        t = round(time.monotonic() - start, 3)
        body = bodies[(i * threads + k) % len(bodies)]
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                out = json.load(r)
                ok, version = r.status == 200, str(out["model"]["version"])
                err = failure = None if ok else f"status {r.status}"
        except Exception as e:
            ok, version, err = False, None, f"{type(e).__name__}: {e}"
            failure = kind(e)
        with lock:
            stats["sent"] += 1
            second = per_second[int(time.monotonic() - start)]
            second[0 if ok else 1 if failure == "503" else 2] += 1
            if ok:
                stats["ok"] += 1
                stats["versions"][version] = stats["versions"].get(version, 0) + 1
                tail.append(version)
                if stats["first_ok"] is None:
                    stats["first_ok"] = t
                    print("first ok", flush=True)
            else:
                stats["kinds"][failure] = stats["kinds"].get(failure, 0) + 1
                stats["failed"] += 1
                if len(stats["errors"]) < 20:
                    stats["errors"].append([t, err])
ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
stats["seconds"] = round(time.monotonic() - start, 1)
stats["tail"] = sorted(set(tail))
stats["per_second"] = [per_second[k] for k in range(max(per_second, default=-1) + 1)]
print("RESULT " + json.dumps(stats), flush=True)
"""


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    first_ok: float | None = None
    tail: list = field(default_factory=list)  # versions that answered the last ~3 s
    kinds: dict = field(default_factory=dict)  # failures by kind: "503", "reset", "timeout"...
    per_second: list = field(default_factory=list)  # [200s, 503s, other failures] each second
    logs: str = ""


class InClusterLoad:
    """A client pod streaming requests at the release's Service while the test changes things.

    with InClusterLoad(cluster, ns, image, rate=20) as load:
        ...                       # helm upgrade, kubectl delete pod
    load.result                   # LoadResult (requests, failures, versions seen)
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        image: str,
        *,
        rate: float = 20,
        threads: int = 4,
        rows: int = 1,
        noise: float | None = None,
        max_seconds: float = 240,
        name: str = "load-client",
        service: str = RELEASE,
        port: int = 80,
    ) -> None:
        self.cluster, self.namespace, self.image, self.name = cluster, namespace, image, name
        self.url = f"http://{service}.{namespace}.svc.cluster.local:{port}/predict"
        self.args = [str(rate), str(threads), str(max_seconds)]
        self.max_seconds = max_seconds
        self.rows, self.noise = rows, noise
        self.result = LoadResult()

    def __enter__(self) -> InClusterLoad:
        self.cluster.start_pod(
            self.namespace, self.name, self.image,
            ["python", "-c", LOAD_CLIENT, self.url, *self.args],
            env={"BODY": json.dumps(sample_request()), "ROWS": str(self.rows),
                 **({"NOISE": str(self.noise)} if self.noise is not None else {})},
            # The labels of the chart's `helm test` pod: its NetworkPolicy (where enforced) lets
            # that client in, and this is one too.
            labels={
                "app.kubernetes.io/name": "ml-service",
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "test",
            },
            # scikit-learn's data set (NOISE) takes an import of scikit-learn
            resources={"requests": {"cpu": "50m", "memory": "64Mi"},
                       "limits": {"memory": "128Mi" if self.noise is None else "384Mi"}},
        )  # fmt: skip
        wait_until(
            lambda: "first ok" in self.cluster.logs(self.namespace, f"pod/{self.name}"),
            120, "the load client's first successful request", interval=1,
            diag=lambda: self.cluster.describe_pods(self.namespace),
        )  # fmt: skip
        return self

    def stop(self) -> LoadResult:
        self.cluster.kubectl(
            "exec", "-n", self.namespace, self.name, "--", "python", "-c",
            "open('/tmp/stop', 'w').close()", check=False,
        )  # fmt: skip
        res = self.cluster.wait_pod(self.namespace, self.name, timeout=self.max_seconds + 60)
        line = next((x for x in res.logs.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise ClusterError(f"load client printed no result (phase {res.phase}):\n{res.logs}")
        self.result = LoadResult(**json.loads(line[len("RESULT ") :]), logs=res.logs)
        return self.result

    def __exit__(self, *exc) -> None:
        try:
            if not self.result.sent:
                self.stop()
        finally:
            self.cluster.kubectl(
                "delete", "pod", self.name, "-n", self.namespace, "--ignore-not-found",
                "--wait=false", check=False,
            )  # fmt: skip


class Background:
    """Run a callable in a thread; `.join()` returns its result or raises its exception."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self._result: Any = None
        self._exc: BaseException | None = None

        def run():
            try:
                self._result = fn(*args, **kwargs)
            except BaseException as exc:
                self._exc = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("background call still running")
        if self._exc:
            raise self._exc
        return self._result


# ---------------------------------------------------------------------------- Argo Rollouts
# An environment's canary sized for a test (its values, not the defaults users get): two steps, a
# measurement every 5 s over a 20 s window (four scrapes), two passing measurements pass a step.
# What each step checks, and every threshold not written here, are the environment's own.
FAST_CANARY = {
    "serviceMonitor": {"interval": "5s", "scrapeTimeout": "5s"},
    "delivery": {"canary": {
        "weights": [33, 66],  # 3 pods: one canary pod, then two
        "analysis": {
            "interval": "5s",
            "window": "20s",
            "successfulMeasurements": 2,
            # one bad measurement is forgiven (a pod's first seconds), a second one aborts
            "failureLimit": 1,
            # 2 minutes without enough samples pause the rollout (a stream too thin: a test bug)
            "inconclusiveLimit": 24,
            # the stream below gives one canary pod ~80 requests (~2,400 rows) per window
            "minRows": 400,
            "minRequests": 40,
            # thousands of rows per side and window here: a share's noise is about 0.01
            "thresholds": {"classShareDifference": 0.06},
        },
    }},
}  # fmt: skip
# The stream canaries are judged on: 30 noisy rows of the data set per request (live traffic
# unlike the held-out split), 12 requests/s through the Service, for as long as a scenario takes.
CANARY_LOAD = {"rate": 12, "threads": 4, "rows": 30, "noise": 0.3, "max_seconds": 900}


def has_rollouts(cluster: Cluster) -> bool:
    proc = cluster.kubectl("get", "--raw", "/apis/argoproj.io/v1alpha1", check=False)
    return proc.returncode == 0 and '"Rollout"' in proc.stdout


def get_rollout(cluster: Cluster, namespace: str, name: str = RELEASE) -> dict:
    return cluster.get("rollout", name, namespace=namespace)


def rollout_tree(cluster: Cluster, namespace: str, name: str = RELEASE) -> str:
    """What `kubectl argo rollouts get rollout` shows, read from the Rollout's status and its
    ReplicaSets (docs/canary.md, "Reading a canary"): phase and message, step, weights, and the
    ready pods of each revision."""
    rollout = get_rollout(cluster, namespace, name)
    status = rollout.get("status") or {}
    steps = len(rollout["spec"].get("strategy", {}).get("canary", {}).get("steps") or [])
    weights = (status.get("canary") or {}).get("weights") or {}
    lines = [
        f"Rollout {namespace}/{name}: {status.get('phase')} {status.get('message', '')}".rstrip(),
        f"step {status.get('currentStepIndex')}/{steps}; canary weight "
        f"{(weights.get('canary') or {}).get('weight')}; stable {status.get('stableRS')}, "
        f"canary {status.get('currentPodHash')}, aborted {bool(status.get('abort'))}",
    ]
    for rs in cluster.get("replicasets", namespace=namespace)["items"]:
        labels = rs["metadata"].get("labels") or {}
        env = rs["spec"]["template"]["spec"]["containers"][0].get("env") or []
        model = next((e.get("value") for e in env if e["name"] == "MODEL_URI"), "-")
        ready = f"{rs['status'].get('readyReplicas', 0)}/{rs['spec']['replicas']} ready"
        lines.append(f"  revision {labels.get('rollouts-pod-template-hash')}: {model}, {ready}")
    return "\n".join(lines)


def wait_rollout(
    cluster: Cluster,
    namespace: str,
    phases: tuple[str, ...],
    timeout: float,
    name: str = RELEASE,
    newer_than: int = 0,
) -> dict:
    """The Rollout once its spec is newer than generation `newer_than` (a release applied by
    someone else, Argo CD, lands later), the controller has seen it, and its phase is one of
    `phases` (Healthy: fully promoted; Degraded: aborted; Paused...)."""

    def reached():
        rollout = get_rollout(cluster, namespace, name)
        status = rollout.get("status") or {}
        generation = int(rollout["metadata"]["generation"])
        if generation <= newer_than or str(status.get("observedGeneration")) != str(generation):
            return None
        return rollout if status.get("phase") in phases else None

    return wait_until(reached, timeout, f"Rollout {namespace}/{name} {' or '.join(phases)}",
                      interval=2, diag=lambda: rollout_tree(cluster, namespace, name))  # fmt: skip


def analysis_runs(cluster: Cluster, namespace: str) -> list[dict]:
    runs = cluster.get("analysisruns", namespace=namespace)["items"]
    return sorted(runs, key=lambda r: r["metadata"]["creationTimestamp"])


def measurements(run: dict) -> dict[str, tuple[str, str]]:
    """check -> (its phase, the value of its last measurement) of one AnalysisRun."""
    out = {}
    for metric in run.get("status", {}).get("metricResults") or []:
        last = (metric.get("measurements") or [{}])[-1]
        out[metric["name"]] = (metric.get("phase", ""), last.get("value", ""))
    return out


def report_canary(name: str, seconds: float, result: LoadResult, run: dict | None) -> None:
    SUMMARY[f"canary: {name}"] = (
        f"{seconds:.0f} s; {result.sent} requests, {result.failed} failed, versions "
        f"{result.versions}; analysis {measurements(run) if run else '-'}"
    )


def abort_under_load(
    cluster: Cluster, ns: str, image: str, release, version: str, stable: str, pods: int
) -> tuple[float, LoadResult, dict, str]:
    """`release()` a version under the canary stream; wait until the controller aborts it and
    every one of the `pods` serves `stable` again. Checks the abort was the analysis' and that no
    request failed. (seconds from the release applied to the abort, the stream, the failed
    AnalysisRun, the `kubectl argo rollouts get rollout` view)."""
    before = int(get_rollout(cluster, ns)["metadata"]["generation"])
    with InClusterLoad(cluster, ns, image, **CANARY_LOAD) as load:
        release()
        start = time.monotonic()
        rollout = wait_rollout(cluster, ns, ("Degraded", "Healthy", "Paused"), timeout=720,
                               newer_than=before)  # fmt: skip
        aborted = time.monotonic() - start
        tree = rollout_tree(cluster, ns)

        def stable_only():
            versions = served_versions(cluster, ns)
            return len(deployment_pods(cluster, ns)) == pods == len(versions) and set(
                versions.values()) == {stable}  # fmt: skip

        wait_until(stable_only, 180, f"only version {stable} serves", interval=2,
                   diag=lambda: cluster.describe_pods(ns))  # fmt: skip
        time.sleep(4)  # the stream's last seconds: answered by the stable pods only
        result = load.stop()
    assert rollout["status"]["phase"] == "Degraded" and rollout["status"].get("abort"), tree
    run = analysis_runs(cluster, ns)[-1]
    assert run["status"]["phase"] == "Failed", run["status"]
    # Aborted by the analysis: nobody else acted, the Rollout says which check failed.
    assert "assessed Failed" in rollout["status"]["message"], rollout["status"]["message"]
    assert result.failed == 0, result.errors
    assert result.versions.get(version, 0) > 0, f"the canary served nothing: {result}"
    assert result.tail == [stable], result
    return aborted, result, run, tree
