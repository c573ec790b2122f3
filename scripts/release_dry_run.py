#!/usr/bin/env python3
"""`make release-dry-run`: the release workflow end to end on this machine, nothing pushed anywhere.

1. start a real MLflow server (sqlite + local artifacts, a free 127.0.0.1 port);
2. train and register a new version of `ml-service` on it (`python -m ml_service.training`);
3. build the serving image (`make image`, the image tier's build);
4. snapshot the work tree into a scratch repository with a local bare remote (its release files
   dropped: they pin versions of the team's registry, not of this new one), clone it, and run
   `scripts/gitops.py release --no-pr` there (quality gate against the same MLflow server):
   branch `gitops/dev` with the new image and model version;
5. "merge" it, let Argo CD's own ApplicationSet code (appset-render) generate the dev Application
   from the clone, render it the way the repo-server does (chart at the pinned commit, values,
   valuesObject) and validate it strictly (tests/support/kube.py).

Differences from CI, on purpose: the image is not pushed, so its "digest" is the local image ID (a
registry manifest digest exists only after a push), and no pull request is opened (`--no-pr`).
Scratch data lives in .local/release-dry-run/ and is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import kube  # noqa: E402
from support.gitrepo import forget_releases, snapshot_repo  # noqa: E402
from support.mlflow import mlflow_env, mlflow_server  # noqa: E402

IMAGE_REPOSITORY = "ghcr.io/owner/ml-service"


def step(title: str) -> float:
    print(f"==> {title}", flush=True)
    return time.monotonic()


def done(t0: float) -> None:
    print(f"    ok ({time.monotonic() - t0:.1f} s)", flush=True)


def sh(*cmd: str, cwd: Path = ROOT, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"release-dry-run: {' '.join(cmd[:4])} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout.strip()


def train(tracking_uri: str, out: Path) -> str:
    env = mlflow_env(tracking_uri)
    sh(sys.executable, "-m", "ml_service.training", "--output-json", str(out), env=env)
    return str(json.loads(out.read_text())["version"])


def build_image(tag: str) -> str:
    sh("make", "--no-print-directory", "image", "IMAGE=ml-service", f"IMAGE_TAG={tag}")
    iid = (ROOT / "build" / "image.iid").read_text().strip()
    if not iid.startswith("sha256:"):
        raise SystemExit(f"release-dry-run: unexpected image id in build/image.iid: {iid[:80]}")
    return iid


def snapshot_clone(scratch: Path) -> tuple[Path, str]:
    """The work tree as it is (tracked + untracked, not ignored) committed in a scratch repo whose
    bare remote is cloned, so the release runs against `origin/main` like in CI."""
    src = scratch / "snapshot"
    snapshot_repo(
        src, author=("release-dry-run", "dry-run@example.invalid"), message="work tree snapshot"
    )
    # The dry run's MLflow server is new and empty: the pins of the work tree name versions of
    # the team's registry, so the scratch repository starts with nothing released.
    forget_releases(src)
    remote, clone = scratch / "remote.git", scratch / "clone"
    sh("git", "clone", "--quiet", "--bare", str(src), str(remote))
    sh("git", "clone", "--quiet", str(remote), str(clone))
    sh("git", "-C", str(clone), "config", "user.name", "release-dry-run")
    sh("git", "-C", str(clone), "config", "user.email", "dry-run@example.invalid")
    return clone, sh("git", "-C", str(clone), "rev-parse", "HEAD")


def render_dev(clone: Path, scratch: Path) -> list[dict]:
    apps_dir = clone / "argocd" / "apps"
    apps = yaml.safe_load_all(
        sh(
            str(ROOT / ".tools" / "bin" / "appset-render"),
            "--repo",
            str(clone),
            "--project",
            str(apps_dir / "projects.yaml"),
            str(apps_dir / "applicationset.yaml"),
        )
    )
    (app,) = [a for a in apps if a and a["metadata"]["name"] == "ml-service-dev"]
    (src,) = [s for s in app["spec"]["sources"] if "path" in s]
    helm = src["helm"]
    tree = scratch / "chart-tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(clone), "archive", src["targetRevision"]], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    chart = tree / src["path"]
    args = ["template", ".", "--name-template", helm["releaseName"]]
    args += ["--namespace", app["spec"]["destination"]["namespace"]]
    for f in helm["valueFiles"]:
        # relative to the chart, in the same commit's tree
        args += ["--values", str((chart / f).resolve())]
    values_object = scratch / "values-object.yaml"
    values_object.write_text(yaml.safe_dump(helm["valuesObject"]))
    args += ["--values", str(values_object)]
    args += ["--api-versions", "monitoring.coreos.com/v1", "--include-crds"]
    proc = kube.run_helm(args, cwd=chart)
    if proc.returncode != 0:
        raise SystemExit(f"release-dry-run: the dev Application does not render:\n{proc.stderr}")
    return kube.load_documents(proc.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", action="store_true", help="keep .local/release-dry-run/<run>")
    p.add_argument("--kube-version", default="1.37.0", help="Kubernetes version to validate for")
    a = p.parse_args()

    base = ROOT / ".local" / "release-dry-run"
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    started = time.monotonic()
    try:
        t = step("MLflow server (real, local)")
        with mlflow_server(scratch / "mlflow") as server:
            done(t)
            t = step(f"train + register on {server.tracking_uri}")
            version = train(server.tracking_uri, scratch / "train.json")
            done(t)
            print(f"    registered ml-service version {version}")

            t = step("snapshot the work tree into a local clone with a bare remote")
            clone, commit = snapshot_clone(scratch)
            done(t)

            t = step(f"make image (tag {commit[:12]})")
            iid = build_image(commit[:12])
            done(t)
            print(f"    image ml-service:{commit[:12]} id {iid}")

            t = step("scripts/gitops.py release --no-pr in the clone (quality gate included)")
            out = sh(
                sys.executable,
                str(ROOT / "scripts" / "gitops.py"),
                "-C",
                str(clone),
                "release",
                "--image-repository",
                IMAGE_REPOSITORY,
                "--tag",
                commit,
                "--digest",
                iid,
                "--model-version",
                version,
                "--no-pr",
                env=mlflow_env(
                    server.tracking_uri,
                    PATH=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ['PATH']}",
                ),
            )
            done(t)
            print(f"    {out}")
        changed = sh(
            "git", "-C", str(clone), "diff", "--name-only", "origin/main", "origin/gitops/dev"
        )
        if changed.split() != ["environments/dev/release.yaml"]:
            raise SystemExit(
                f"release-dry-run: the branch changes more than the release file: {changed}"
            )

        t = step(
            "render the dev Application from gitops/dev (as the repo-server) + strict validation"
        )
        # What merging the PR does: main becomes the branch; the git generator reads main.
        sh("git", "-C", str(clone), "checkout", "--quiet", "-B", "main", "origin/gitops/dev")
        docs = render_dev(clone, scratch)
        findings = kube.validate(docs, [a.kube_version], crd_files=kube.crd_files())
        if findings:
            raise SystemExit(
                "release-dry-run: invalid manifests:\n" + "\n".join(map(str, findings))
            )
        # the server's settings are in its pod template (a Deployment, or a Rollout by canary)
        (workload,) = [d for d in docs if d["kind"] in ("Deployment", "Rollout")]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        image = container["image"]
        model_uris = {e.get("value") for e in container.get("env", []) if e["name"] == "MODEL_URI"}
        expected_uri = f"models:/ml-service/{version}"
        expected_image = f"{IMAGE_REPOSITORY}:{commit}@{iid}"
        if image != expected_image or model_uris != {expected_uri}:
            raise SystemExit(
                f"release-dry-run: dev renders image {image} and MODEL_URI {model_uris}, "
                f"expected {expected_image} and {expected_uri}"
            )
        done(t)
        print(f"    {len(docs)} objects valid for Kubernetes {a.kube_version}; image {image}")
        print(f"release-dry-run: ok in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if a.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
