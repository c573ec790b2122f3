"""platform.Dockerfile (the images of charts/mlflow-platform) as source: hadolint with every ignore
justified, shellcheck on the PostgreSQL entrypoint, an allow-listed build context, and the chart's
image tags agreeing with the locks. (`make platform-images` builds them; the in-cluster tier will
run them.)"""

from __future__ import annotations

import re
import subprocess

import yaml
from support import kube
from support.tools import hadolint_problems, tool

ROOT = kube.ROOT
DOCKERFILE = ROOT / "platform.Dockerfile"
ENTRYPOINT = ROOT / "scripts" / "docker" / "postgres-entrypoint.sh"


def test_hadolint_passes_with_every_ignore_justified():
    assert not (problems := hadolint_problems(DOCKERFILE)), "\n".join(problems)


def test_targets_run_unprivileged():
    text = DOCKERFILE.read_text()
    targets = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert targets == ["mlflow-builder", "mlflow-server", "postgresql", "minio"]
    stages = re.split(r"^FROM ", text, flags=re.M)[2:]
    assert all("USER 10001:10001" in stage for stage in stages)


def test_entrypoint_passes_shellcheck():
    proc = subprocess.run([tool("shellcheck", "setup-gitops"), str(ENTRYPOINT)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def test_build_context_is_an_allow_list():
    patterns = [
        line.strip()
        for line in (ROOT / "platform.Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    copied = re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M)
    assert sorted(p.removeprefix("!") for p in patterns[1:]) == sorted(copied)


def test_chart_image_tags_follow_the_locks():
    values = yaml.safe_load((ROOT / "charts/mlflow-platform/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts/mlflow-platform/Chart.yaml").read_text())
    lock = (ROOT / "requirements/mlflow-server.txt").read_text()
    assert f"\nmlflow=={chart['appVersion']} " in lock, "Chart appVersion != mlflow in the lock"
    minio = re.search(r"^MINIO_VERSION := (\S+)", (ROOT / "mk/platform.mk").read_text(), re.M)
    assert minio and values["s3"]["image"]["tag"] == minio[1]
