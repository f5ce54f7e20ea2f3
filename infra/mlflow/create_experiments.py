"""Create the project's MLflow experiments on a tracking server, with the server's artifact root.

The training and monitoring stages create a missing experiment with CTR_MLFLOW_ARTIFACTS as its
artifact location: a path on whichever machine gets there first, which no other machine can read.
Created here first, on a server started with `--serve-artifacts`, the experiments get the server's
root (`mlflow-artifacts:/<id>`): every Airflow worker and ranker replica then uploads and downloads
artifacts through the server. Run it once the server is up (the compose file's `mlflow-init` does);
running it again changes nothing.

    MLFLOW_TRACKING_URI=http://mlflow:5000 python infra/mlflow/create_experiments.py

On a server behind MLflow's basic-auth app (infra/mlflow/serve.sh) it runs as the admin account
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) and also creates the project's two accounts,
each from its own secret, and sets their passwords again on every run (so rotating a secret and
re-running it is the rotation):

- the pipeline's, CTR_MLFLOW_PIPELINE_USERNAME / _PASSWORD: EDIT on both experiments (it logs
  runs and models there), MANAGE on the registered models (it registers versions and moves their
  aliases; on the first run it creates them, which gives it MANAGE by itself);
- the ranking service's, CTR_MLFLOW_RANKER_USERNAME / _PASSWORD: READ on the experiments and
  registered models, nothing more. It can load a version and follow its aliases, never move them.
"""

from __future__ import annotations

import os
import sys

from models.settings import get_settings

ACCOUNTS = {  # variable prefix -> what the account may do to the project's experiments and models
    "CTR_MLFLOW_PIPELINE": ("EDIT", "MANAGE"),
    "CTR_MLFLOW_RANKER": ("READ", "READ"),
}


def main() -> int:
    from mlflow import MlflowClient

    settings = get_settings()
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI={uri!r} is not a tracking server: nothing to do", file=sys.stderr)
        return 1
    tracking = MlflowClient(uri)
    local, experiments = [], []
    for name in (settings.experiment, f"{settings.experiment}-monitoring"):
        experiment = tracking.get_experiment_by_name(name)
        if experiment is None:
            experiment = tracking.get_experiment(tracking.create_experiment(name))
            print(f"created {name}: artifacts at {experiment.artifact_location}")
        else:
            print(f"exists  {name}: artifacts at {experiment.artifact_location}")
        experiments.append(experiment.experiment_id)
        if experiment.artifact_location.startswith(("file:", "/")):
            local.append(name)
    if local:
        print(
            f"{', '.join(local)}: artifacts on one machine's disk; other machines cannot load these "
            "models (delete the experiments, or create them here before anything else does)",
            file=sys.stderr,
        )
        return 1
    models = [settings.xgb_model_name, settings.wide_deep_model_name]
    return create_accounts(uri, experiments, models, os.environ)


def create_accounts(uri: str, experiments: list[str], models: list[str], environ) -> int:
    """The pipeline's and the ranker's accounts with their permissions, for each account whose
    username and password are set; nothing when none is."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server.auth.client import AuthServiceClient

    wanted = {
        environ.get(f"{prefix}_USERNAME", ""): (environ.get(f"{prefix}_PASSWORD", ""), grants)
        for prefix, grants in ACCOUNTS.items()
    }
    wanted.pop("", None)
    if not wanted:
        return 0
    auth = AuthServiceClient(uri)
    existing = []
    for name in models:
        try:
            MlflowClient(uri).get_registered_model(name)
            existing.append(name)
        except MlflowException:
            pass  # the pipeline creates it, and gets MANAGE on it by doing so
    for username, (password, (on_experiments, on_models)) in wanted.items():
        if len(password) < 16:
            print(f"the MLflow password of {username} must be at least 16 characters", file=sys.stderr)
            return 1
        try:
            auth.create_user(username, password)
            print(f"created MLflow user {username}")
        except RestException:
            auth.update_user_password(username, password)
            print(f"exists  MLflow user {username}: password set")
        grants = [("experiment", e, on_experiments) for e in experiments]
        grants += [("registered_model", m, on_models) for m in existing]
        for resource_type, resource, permission in grants:
            try:
                auth.grant_user_permission(username, resource_type, resource, permission)
            except RestException as exc:  # granted before: grant what is wanted now
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                auth.revoke_user_permission(username, resource_type, resource)
                auth.grant_user_permission(username, resource_type, resource, permission)
        on = ", ".join(existing) or "no models yet"
        print(f"        {username}: {on_experiments} on the experiments, {on_models} on {on}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
