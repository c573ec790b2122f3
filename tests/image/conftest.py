"""Image tier fixtures: a Docker engine (started here if none answers), the local base image, the
serving image built from the Dockerfile (plain and with a baked-in model), and running containers.

Images are kept between runs (the base is rebuilt only when its recipe changes, the serving image
reuses BuildKit's layer cache); set IMAGE_TEST_CLEANUP=1 to remove the images built here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.mlflow import QUIET_MLFLOW_ENV
from support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "docker"
# Debian's client: it talks BuildKit (another `docker` on PATH may not).
DOCKER = "/usr/bin/docker"
IMAGE = "ml-service:image-test"
BAKED_IMAGE = "ml-service:image-test-baked"
UID_GID = "10001:10001"

# Figures for the closing note (image size, virtualenv size, build and start-up times).
SUMMARY: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.write_sep("-", "image tier")
        for key, value in SUMMARY.items():
            terminalreporter.write_line(f"{key}: {value}")


@dataclass
class Docker:
    env: dict[str, str]
    started_here: bool

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [DOCKER, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        return proc

    def inspect(self, ref: str) -> dict:
        return json.loads(self.run("inspect", ref).stdout)[0]

    def script(
        self, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 1200
    ) -> str:
        """Run scripts/docker/<name>; its last stdout line is the result (an image reference)."""
        proc = subprocess.run(
            [str(SCRIPTS / name), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed:\n{proc.stderr[-6000:]}")
        return proc.stdout.strip().splitlines()[-1]


def _answers(env: dict[str, str]) -> bool:
    proc = subprocess.run(
        [DOCKER, "version"], env=env, capture_output=True, timeout=30, check=False
    )
    return proc.returncode == 0


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """A Docker engine: the one in DOCKER_HOST if it answers, else the project's private dockerd."""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    missing = [p for p in (DOCKER, dockerd) if not Path(p).exists()]
    missing += [] if shutil.which("debootstrap") else ["debootstrap"]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run 'make setup'")
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    started_here = False
    private = subprocess.run(
        [str(SCRIPTS / "dockerd.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout.strip()
    private_host = private.partition("=")[2]
    if _answers(env):
        pass
    elif _answers({**env, "DOCKER_HOST": private_host}):
        # the private engine is already up (make docker-up, another run): use it, leave it up
        env["DOCKER_HOST"] = private_host
    else:
        started = subprocess.run(
            [str(SCRIPTS / "dockerd.sh"), "start"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if started.returncode != 0:
            # The one legitimate skip: the engine cannot run here (no cgroups, no overlayfs...).
            reason = f"the Docker engine cannot start on this machine: {started.stderr[-1500:]}"
            print(reason)
            pytest.skip(reason)
        key, _, value = started.stdout.strip().splitlines()[-1].partition("=")
        env[key] = value
        started_here = True
    engine = Docker(env, started_here=started_here)
    try:
        yield engine
    finally:
        if os.environ.get("IMAGE_TEST_CLEANUP") == "1":
            engine.run("rmi", "--force", IMAGE, BAKED_IMAGE, check=False)
        if started_here:
            subprocess.run([str(SCRIPTS / "dockerd.sh"), "stop"], timeout=120, check=False)


@pytest.fixture(scope="session")
def base_image(docker: Docker) -> str:
    """The debootstrap base (bookworm + python3), built once and cached by recipe hash."""
    start = time.monotonic()
    ref = docker.script("build-base.sh")
    SUMMARY[f"base {ref}"] = f"ready in {time.monotonic() - start:.0f} s (rebuilt only if missing)"
    return ref


def _build(docker: Docker, tag: str, *args: str, env: dict[str, str] | None = None) -> str:
    old = docker.run("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    start = time.monotonic()
    image_id = docker.script("build-image.sh", "--image", tag, *args, env=env)
    SUMMARY[f"build {tag}"] = f"{time.monotonic() - start:.0f} s"
    if old and old != image_id:
        # the previous build of this tag is now dangling: don't let test runs pile up images
        docker.run("rmi", old, check=False)
    return image_id


@pytest.fixture(scope="session")
def image(docker: Docker, base_image: str) -> str:
    """The default (`runtime`) target: the model is fetched from MLflow at start-up."""
    return _build(docker, IMAGE, "--base", base_image)


@pytest.fixture(scope="session")
def baked_image(docker: Docker, base_image: str, registered_model) -> str:
    """The `baked` target with the session's champion downloaded from MLflow at build time
    (`build-image.sh --model`, the path `make image IMAGE_MODEL=...` takes)."""
    return _build(
        docker,
        BAKED_IMAGE,
        "--base", base_image,
        "--model", registered_model.alias_uri,
        env={**QUIET_MLFLOW_ENV, "MLFLOW_TRACKING_URI": registered_model.tracking_uri},
    )  # fmt: skip


@dataclass
class Container:
    docker: Docker
    name: str
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def state(self) -> dict:
        return self.docker.inspect(self.name)["State"]

    def logs(self) -> str:
        proc = self.docker.run("logs", "--tail", "60", self.name, check=False)
        return (proc.stdout + proc.stderr)[-6000:]


@contextlib.contextmanager
def run_container(
    docker: Docker, image_ref: str, env: dict[str, str], network: str = "host"
) -> Iterator[Container]:
    """`docker run` the way the chart runs the pod: read-only root FS, UID/GID 10001, only /tmp
    writable; host networking so it reaches the host's MLflow server on 127.0.0.1."""
    name = f"ml-service-image-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    args = [
        "run", "--detach", "--name", name,
        "--read-only", "--user", UID_GID, "--tmpfs", "/tmp:rw,size=64m",
        "--network", network,
        # the image's HEALTHCHECK command, probed more often so the test is quick
        "--health-interval", "2s", "--health-start-period", "120s",
        "--env", f"PORT={port}", "--env", f"PROBE_PORT={free_port()}",
    ]  # fmt: skip
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    docker.run(*args, image_ref)
    container = Container(docker, name, port)
    try:
        yield container
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)
