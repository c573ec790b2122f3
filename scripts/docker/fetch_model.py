"""Download an MLflow model directory to bake into the image; print "<name> <version>".

    python scripts/docker/fetch_model.py models:/ml-service@champion build/model

Reads the tracking server and credentials from MLflow's own environment variables
(MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN). A registry URI is resolved to a
fixed version first, so the name and version baked into the image's labels match its files.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model_uri", help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..."
    )
    parser.add_argument("dest", type=Path, help="directory to create (must not exist)")
    args = parser.parse_args(argv)

    import mlflow.artifacts
    from mlflow import MlflowClient

    name, version, uri = "model", "local", args.model_uri
    match = REGISTRY_URI.match(args.model_uri)
    if match:
        client = MlflowClient()
        name = match["name"]
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        else:
            version = match["version"]
        uri = f"models:/{name}/{version}"

    if args.dest.exists():
        parser.error(f"{args.dest} exists; remove it first")
    tmp = args.dest.with_name(args.dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
    if not (local / "MLmodel").is_file():
        print(f"{uri} has no MLmodel file: not an MLflow model", file=sys.stderr)
        return 1
    local.rename(args.dest)
    shutil.rmtree(tmp, ignore_errors=True)
    print(name, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
