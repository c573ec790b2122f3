"""Container images for the local cluster, all built here (nothing is pulled, ever):

- the add-ons (pause, CoreDNS, metrics-server, prometheus-operator, its config reloader,
  Prometheus; the Argo Rollouts controller): `FROM scratch` + one static binary from
  `make setup-cluster` (`make setup-rollouts`);
- charts/mlflow-platform's three images (MLflow server, PostgreSQL, MinIO) from
  platform.Dockerfile, by scripts/docker/build-platform-images.sh (`make platform-images`);
- the ml-service image itself comes from `scripts/docker/build-image.sh`, as `make image` does.

Images are built in the project's private Docker engine (`scripts/docker/dockerd.sh`) and tagged
`mlsk.local/...`, a registry name that does not resolve anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..kube import rollouts_version
from .config import DEFAULT_BIN_DIR, ROOT, TOOLS

DOCKER = "/usr/bin/docker"
SCRIPTS = ROOT / "scripts" / "docker"
REGISTRY = "mlsk.local"


def _versions() -> dict[str, str]:
    """Versions written by `make setup-cluster` next to the binaries."""
    try:
        return json.loads((DEFAULT_BIN_DIR / "versions.json").read_text())
    except (OSError, ValueError):
        return {}


_V = _versions()
_OPERATOR = _V.get("prometheus-operator", "v0.85.0")
ADDON_IMAGES = {
    "pause": f"{REGISTRY}/pause:{_V.get('pause', '3.10.2')}",
    "coredns": f"{REGISTRY}/coredns:{_V.get('coredns', 'v1.15.0')}",
    "metrics-server": f"{REGISTRY}/metrics-server:{_V.get('metrics-server', 'v0.9.0')}",
    "prometheus-operator": f"{REGISTRY}/prometheus-operator:{_OPERATOR}",
    "prometheus-config-reloader": f"{REGISTRY}/prometheus-config-reloader:{_OPERATOR}",
    "prometheus": f"{REGISTRY}/prometheus:{_V.get('prometheus', 'v3.13.0')}",
    "argo-rollouts": f"{REGISTRY}/argo-rollouts:{rollouts_version()}",
}  # fmt: skip
# image -> binary in the bin dir (or elsewhere in .tools)
ADDON_BINARIES = {
    "pause": "pause",
    "coredns": "coredns",
    "metrics-server": "metrics-server",
    "prometheus-operator": "operator",
    "prometheus-config-reloader": "prometheus-config-reloader",
    "prometheus": "prometheus",
    "argo-rollouts": TOOLS / f"argo-rollouts-{rollouts_version()}" / "rollouts-controller",
}


def prometheus_operator_dir() -> Path:
    """The prometheus-operator module in the Go module cache (its CRD and RBAC YAML)."""
    version = _V.get("prometheus-operator", "v0.85.0")
    out = subprocess.run(
        ["go", "mod", "download", "-json",
         f"github.com/prometheus-operator/prometheus-operator@{version}"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    return Path(json.loads(out)["Dir"])


class Docker:
    """The Docker engine images are built in: DOCKER_HOST if it answers, else the project's
    private dockerd (started here and stopped by `close()` if this process started it)."""

    def __init__(self) -> None:
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        self.started_here = False
        if not self._answers():
            private = self._script("env").strip().partition("=")[2]
            self.env["DOCKER_HOST"] = private
            if not self._answers():
                out = self._script("start")
                self.env["DOCKER_HOST"] = out.strip().splitlines()[-1].partition("=")[2]
                self.started_here = True

    def _script(self, *args: str) -> str:
        return subprocess.run(
            [str(SCRIPTS / "dockerd.sh"), *args], capture_output=True, text=True, check=True,
            timeout=180,
        ).stdout  # fmt: skip

    def _answers(self) -> bool:
        return (
            subprocess.run(
                [DOCKER, "version"], env=self.env, capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )

    def run(self, *args: str, timeout: float = 1200, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False, **kw,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} failed:\n{proc.stderr[-4000:]}")
        return proc

    def has(self, ref: str) -> bool:
        return subprocess.run(
            [DOCKER, "image", "inspect", ref], env=self.env, capture_output=True, check=False,
            timeout=60,
        ).returncode == 0  # fmt: skip

    def close(self) -> None:
        if self.started_here:
            self._script("stop")


@contextlib.contextmanager
def docker_engine() -> Iterator[Docker]:
    engine = Docker()
    try:
        yield engine
    finally:
        engine.close()


def _scratch_image(docker: Docker, ref: str, binary: Path, user: str = "65532:65532") -> None:
    with tempfile.TemporaryDirectory(prefix="mlsk-image-") as ctx:
        shutil.copy2(binary, Path(ctx) / binary.name)
        # /bin/<name>, as in the upstream images (the operator runs /bin/prometheus and
        # /bin/prometheus-config-reloader by path).
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM scratch\nCOPY {binary.name} /bin/{binary.name}\nUSER {user}\n"
            f'ENTRYPOINT ["/bin/{binary.name}"]\n'
        )
        docker.run("build", "--quiet", "--tag", ref, ctx)


def build_addon_images(docker: Docker, bin_dir: Path = DEFAULT_BIN_DIR) -> dict[str, float]:
    """Every add-on image (skipped when the tag exists and is newer than its binary)."""
    took = {}
    for name, ref in ADDON_IMAGES.items():
        binary = bin_dir / ADDON_BINARIES[name]
        if not binary.exists():
            raise RuntimeError(f"{binary} missing: run `make setup-cluster setup-rollouts`")
        label = hashlib.sha256(binary.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
        tagged = f"{ref.rsplit(':', 1)[0]}:bin-{label}"
        start = time.monotonic()
        if not docker.has(tagged):
            _scratch_image(docker, tagged, binary)
        docker.run("tag", tagged, ref)
        took[name] = time.monotonic() - start
    return took


PLATFORM_CHART = ROOT / "charts" / "mlflow-platform"


def platform_images(chart: Path = PLATFORM_CHART) -> dict[str, str]:
    """platform.Dockerfile target -> the image charts/mlflow-platform (of this checkout, or the
    chart directory `chart` of another) runs by default (`<component>.image.repository:<tag or
    appVersion>`): the names the platform-images workflow pushes."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]

    def ref(image: dict, default: str) -> str:
        return f"{image['repository']}:{image['tag'] or default}"

    return {
        "mlflow-server": ref(values["mlflow"]["image"], app_version),
        "postgresql": ref(values["postgresql"]["image"], "15"),
        "minio": ref(values["s3"]["image"], "latest"),
    }


def build_platform_images(docker: Docker) -> tuple[dict[str, str], str]:
    """The three images of charts/mlflow-platform, built by the project's script
    (scripts/docker/build-platform-images.sh, what `make platform-images` runs) on the local
    debootstrap base, tagged as the chart's defaults; BuildKit's cache makes a rebuild cheap.
    Returns the refs and the script's report (target, tag, size, seconds per image)."""
    refs = platform_images()
    minio = TOOLS / "bin" / "minio"
    if not minio.exists():
        raise RuntimeError(f"{minio} missing: run `make setup-platform`")
    # The build context takes the binary from build/platform/ (platform.Dockerfile.dockerignore).
    # Copied then renamed: the platform tier may build from the same context at the same time.
    context = ROOT / "build" / "platform"
    context.mkdir(parents=True, exist_ok=True)
    partial = context / f".minio.{os.getpid()}"
    shutil.copy2(minio, partial)
    partial.replace(context / "minio")
    proc = subprocess.run(
        [str(SCRIPTS / "build-platform-images.sh"), *(f"{t}={r}" for t, r in refs.items())],
        env=docker.env, capture_output=True, text=True, timeout=2400, check=False, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"building the platform images failed:\n{proc.stderr[-6000:]}")
    return refs, proc.stdout.strip()
