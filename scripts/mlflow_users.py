#!/usr/bin/env python3
"""The MLflow users of ml-service, each with exactly the permissions it needs (docs/gitops.md, 8).

    MLFLOW_TRACKING_URI=https://mlflow.acme.example MLFLOW_TRACKING_USERNAME=admin \\
        .venv/bin/python scripts/mlflow_users.py --out-dir ~/.config/ml-service/mlflow

    ml-service-ci        EDIT on the model (and on its experiment if it exists)   release, promote
    ml-service-champion  EDIT on the model; DENY on every experiment              champion-alias
    ml-service-<env>     READ on the model                       the pods of dev, staging and prod

The champion user may move the model's aliases and nothing more: deleting a version or the model
needs MANAGE, and registering a version needs a logged model it may read (the chart registers
from logged models only, `mlflow.modelVersionSource`), which the DENY on the experiments takes
away. CI owns the experiment and the model it creates on its first training.

The admin's password is asked for (or read from MLFLOW_TRACKING_PASSWORD), never taken from the
command line. A new user gets a random password written to `<out-dir>/<user>` (mode 0600), for
`gh secret set ... < file` and `kubectl create secret ... --from-file`; it is never printed. An
existing user keeps its password (`--rotate` sets a new one) and gets its permissions again.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path

MODEL = "ml-service"
ENVIRONMENTS = ("dev", "staging", "prod")


def grants(role: str, model: str, experiment_id: str | None) -> list[tuple[str, str, str]]:
    """(resource type, resource id, permission) of a role."""
    if role == "ci":
        own = [("experiment", experiment_id, "EDIT")] if experiment_id else []
        return [("registered_model", model, "EDIT"), *own]
    if role == "champion":
        return [("registered_model", model, "EDIT"), ("experiment", "*", "DENY")]
    return [("registered_model", model, "READ")]


def users(prefix: str) -> dict[str, str]:
    """user name -> role."""
    return {
        f"{prefix}-ci": "ci",
        f"{prefix}-champion": "champion",
        **{f"{prefix}-{env}": "reader" for env in ENVIRONMENTS},
    }


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mlflow_users.py", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, required=True, help="where new passwords are written")
    p.add_argument("--model", default=MODEL, help="registered model name (%(default)s)")
    p.add_argument("--prefix", default=MODEL, help="user name prefix (%(default)s)")
    p.add_argument("--rotate", action="store_true", help="new passwords for existing users too")
    a = p.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI") or not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        print("mlflow_users: set MLFLOW_TRACKING_URI and MLFLOW_TRACKING_USERNAME (an admin)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        # Read by MLflow's client from the environment of this process only.
        os.environ["MLFLOW_TRACKING_PASSWORD"] = getpass.getpass("MLflow admin password: ")

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    auth = AuthServiceClient(uri)
    experiment = MlflowClient(uri).get_experiment_by_name(a.model)
    experiment_id = experiment.experiment_id if experiment else None
    for user, role in users(a.prefix).items():
        try:
            auth.get_user(user)
            exists = True
        except MlflowException:
            exists = False
        if not exists or a.rotate:
            password = secrets.token_urlsafe(24)
            write_secret(a.out_dir / user, password)
            if exists:
                auth.update_user_password(user, password)
            else:
                auth.create_user(user, password)
        for resource_type, resource_id, permission in grants(role, a.model, experiment_id):
            try:
                auth.grant_user_permission(user, resource_type, resource_id, permission)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # Granted before, maybe at another level: replace it.
                auth.revoke_user_permission(user, resource_type, resource_id)
                auth.grant_user_permission(user, resource_type, resource_id, permission)
        state = "created" if not exists else "new password" if a.rotate else "kept its password"
        granted = ", ".join(" ".join(g) for g in grants(role, a.model, experiment_id))
        print(f"{user}: {state}; {role} ({granted})")
    print(f"passwords of new users: {a.out_dir}/<user> (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
