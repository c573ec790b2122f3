"""Container images for the local cluster, all built here (nothing is pulled, ever):

- the add-ons (pause, CoreDNS, metrics-server, prometheus-operator, its config reloader,
  Prometheus): `FROM scratch` + one static binary from `make setup-cluster`;
- an MLflow tracking server: the local debootstrap base + a virtualenv made by uv from the
  project's lock (`requirements/train.txt`, i.e. runtime + training extras, same pins as dev);
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
}  # fmt: skip
# image -> binary in the bin dir
ADDON_BINARIES = {
    "pause": "pause",
    "coredns": "coredns",
    "metrics-server": "metrics-server",
    "prometheus-operator": "operator",
    "prometheus-config-reloader": "prometheus-config-reloader",
    "prometheus": "prometheus",
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
            raise RuntimeError(f"{binary} missing: run `make setup-cluster`")
        label = hashlib.sha256(binary.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
        tagged = f"{ref.rsplit(':', 1)[0]}:bin-{label}"
        start = time.monotonic()
        if not docker.has(tagged):
            _scratch_image(docker, tagged, binary)
        docker.run("tag", tagged, ref)
        took[name] = time.monotonic() - start
    return took


MLFLOW_LOCK = ROOT / "requirements" / "train.txt"


MLFLOW_DOCKERFILE = """\
FROM {base}
# /opt/mlflow: requirements/train.txt installed by uv (bytecode compiled), test suites removed
COPY venv /opt/mlflow
ENV PATH=/opt/mlflow/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \\
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
USER 10001:10001
ENTRYPOINT ["/opt/mlflow/bin/python", "-m", "mlflow"]
"""


def mlflow_image_ref(base: str) -> str:
    """Tagged by a hash of the lock, the recipe and the base: rebuilt only when one changes."""
    recipe = MLFLOW_LOCK.read_bytes() + MLFLOW_DOCKERFILE.format(base=base).encode()
    return f"{REGISTRY}/mlflow:{hashlib.sha256(recipe).hexdigest()[:12]}"


def build_mlflow_image(docker: Docker) -> tuple[str, float]:
    """An MLflow tracking server image: the project's debootstrap base + a virtualenv built by uv
    from requirements/train.txt (wheels from uv's cache, hash-checked)."""
    start = time.monotonic()
    base = subprocess.run(
        [str(SCRIPTS / "build-base.sh")], env=docker.env, capture_output=True, text=True,
        check=True, timeout=1200,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    ref = mlflow_image_ref(base)
    if docker.has(ref):
        return ref, 0.0
    uv = TOOLS / "uv" / "bin" / "uv"
    with tempfile.TemporaryDirectory(prefix="mlsk-mlflow-") as ctx:
        venv = Path(ctx) / "venv"
        # Same interpreter path as the base image (Debian bookworm's python3.11), so the venv's
        # `python` symlink resolves inside the image.
        subprocess.run([str(uv), "venv", "-q", "--python", "/usr/bin/python3.11", str(venv)],
                       check=True, timeout=300, capture_output=True)  # fmt: skip
        subprocess.run(
            [str(uv), "pip", "sync", "-q", "--require-hashes", "--link-mode", "copy",
             "--compile-bytecode", str(MLFLOW_LOCK)],
            env={**os.environ, "VIRTUAL_ENV": str(venv)}, check=True, timeout=1200,
            capture_output=True,
        )  # fmt: skip
        # Test suites are never imported by the server (~130 MB less to build, save and import).
        for path in sorted(venv.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir() and path.name in ("tests", "test") and "site-packages" in path.parts:
                shutil.rmtree(path, ignore_errors=True)
        (Path(ctx) / "Dockerfile").write_text(MLFLOW_DOCKERFILE.format(base=base))
        docker.run("build", "--quiet", "--tag", ref, ctx, timeout=1800)
    return ref, time.monotonic() - start
