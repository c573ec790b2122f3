"""Static checks: hadolint on the Dockerfile, the built image's configuration and contents."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from support.tools import hadolint_problems

from .conftest import ROOT, SUMMARY, UID_GID, Docker


def test_hadolint_passes_with_every_ignore_justified():
    assert not (problems := hadolint_problems(ROOT / "Dockerfile")), "\n".join(problems)


def test_build_context_is_an_allow_list():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the .dockerignore should start by excluding everything"
    allowed = {p for p in patterns if p.startswith("!")}
    assert allowed == {
        "!requirements/runtime.txt",
        "!app/ml_service/",
        "!scripts/docker/image-excludes.txt",
        "!scripts/docker/compile_startup.py",
        "!build/model*/",
    }


def _config(docker: Docker, ref: str) -> dict:
    return docker.inspect(ref)["Config"]


def test_image_configuration(docker: Docker, image: str):
    config = _config(docker, image)
    assert config["User"] == UID_GID
    assert config["Entrypoint"] == ["python", "-m", "ml_service"], "exec form: python is PID 1"
    assert not config.get("Cmd")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8000" and env["PROBE_PORT"] == "8081"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # The default target serves the demo model trained at build time (MODEL_URI set at run time,
    # e.g. by the chart's registry mode, replaces it).
    assert env["MODEL_URI"] == "/opt/ml-service/model"
    assert (env["MODEL_NAME"], env["MODEL_VERSION"]) == ("ml-service", "demo")
    assert {"8000/tcp", "8081/tcp"} <= set(config["ExposedPorts"])
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD" and health[1:3] == ["python", "-c"] and "/health" in health[3]
    assert "PROBE_PORT" in health[3], "the HEALTHCHECK asks the probe listener"
    labels = config["Labels"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head
    version = re.search(r'__version__ = "(.+)"', (ROOT / "app/ml_service/__init__.py").read_text())
    assert version and labels["org.opencontainers.image.version"] == version[1]
    assert labels["org.opencontainers.image.source"]


def _in_image(docker: Docker, ref: str, code: str) -> str:
    return docker.run(
        "run", "--rm", "--network", "none", "--read-only", "--user", UID_GID,
        "--entrypoint", "python", ref, "-c", code,
    ).stdout  # fmt: skip


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked_pins() -> dict[str, str]:
    """requirements/runtime.txt minus what scripts/docker/image-excludes.txt leaves out."""
    excludes = {
        _normal(line.strip())
        for line in (ROOT / "scripts/docker/image-excludes.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pins = {}
    for line in (ROOT / "requirements/runtime.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if match and _normal(match[1]) not in excludes:
            pins[_normal(match[1])] = match[2]
    assert excludes <= {_normal(n) for n in _all_locked()}, "an exclude that is not in the lock"
    return pins


def _all_locked() -> list[str]:
    text = (ROOT / "requirements/runtime.txt").read_text()
    return re.findall(r"(?m)^([A-Za-z0-9_.\-]+)==", text)


def test_image_ships_serving_code_only(docker: Docker, image: str):
    """The package in the image is the serving app and the shared modules loading a model needs;
    training and the release gate (their dependencies are not installed) are nowhere under /opt."""
    out = _in_image(
        docker,
        image,
        "import json, os, ml_service;"
        "found = [top for top, dirs, files in os.walk('/opt')"
        " if top.endswith(('ml_service/training', 'ml_service/release'))];"
        "package = sorted(os.listdir(os.path.dirname(ml_service.__file__)));"
        "print(json.dumps({'found': found, 'package': package}))",
    )
    shipped = json.loads(out)
    assert shipped["found"] == [], shipped["found"]
    assert {"serving", "model_format.py", "redact.py", "__main__.py"} <= set(shipped["package"])
    assert not {"training", "release"} & set(shipped["package"]), shipped["package"]


def test_virtualenv_holds_exactly_the_runtime_lock(docker: Docker, image: str):
    listing = _in_image(
        docker,
        image,
        "import json, re, importlib.metadata as m;"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
        " for d in m.distributions()}))",
    )
    installed = json.loads(listing)
    assert installed == _locked_pins()
    # serving runs on mlflow-skinny; no installer is left behind
    assert "mlflow" not in installed and "pip" not in installed and "setuptools" not in installed


def test_no_build_secret_in_any_layer(docker: Docker, image: str):
    """The CA bundle handed to the build as a BuildKit secret must not be a file in the image."""
    secret = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if not secret or not Path(secret).is_file():
        pytest.skip("no CA bundle was passed to the build as a secret (PIP_CERT unset)")
    data = Path(secret).read_bytes()
    found = _in_image(
        docker,
        image,
        "import hashlib, os\n"
        f"size, digest = {len(data)}, {hashlib.sha256(data).hexdigest()!r}\n"
        "for top, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/proc', '/sys', '/dev')]\n"
        "    for f in files:\n"
        "        p = os.path.join(top, f)\n"
        "        try:\n"
        "            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) == size"
        " and hashlib.sha256(open(p, 'rb').read()).hexdigest() == digest:\n"
        "                print(p)\n"
        "        except OSError:\n"
        "            pass\n",
    )
    assert found.strip() == "", f"the build secret ended up in the image: {found}"
    history = docker.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "BEGIN CERTIFICATE" not in history


def test_image_size_budget(docker: Docker, image: str, record_property):
    size = docker.inspect(image)["Size"]
    venv = int(
        docker.run(
            "run", "--rm", "--network", "none", "--entrypoint", "du", image, "-sb", "/opt/venv"
        ).stdout.split()[0]
    )  # fmt: skip
    mb = 1_000_000
    record_property("image_bytes", size)
    record_property("venv_bytes", venv)
    SUMMARY["image"] = f"{size / mb:.0f} MB"
    SUMMARY["runtime virtualenv"] = f"{venv / mb:.0f} MB"
    # The image budget is 400 MB; the base image accounts for ~125 MB.
    assert size < 400 * mb, f"image is {size / mb:.0f} MB, over the 400 MB budget"


def test_startup_modules_ship_bytecode_not_source(docker: Docker, image: str):
    """What a start imports loads from bytecode (the root FS is read-only: nothing can be compiled
    and cached at run time); the app itself keeps its source next to its bytecode."""
    out = _in_image(
        docker,
        image,
        "import importlib, json;"
        "names = ['sklearn.base', 'fastapi.routing', 'mlflow.models.signature',"
        " 'ml_service.serving.app'];"
        "print(json.dumps({n: type(importlib.import_module(n).__spec__.loader).__name__"
        " for n in names}))",
    )
    loaders = json.loads(out)
    assert loaders["sklearn.base"] == "SourcelessFileLoader"
    assert loaders["fastapi.routing"] == "SourcelessFileLoader"
    assert loaders["mlflow.models.signature"] == "SourcelessFileLoader"
    assert loaders["ml_service.serving.app"] == "SourceFileLoader"
