"""Create the project's MLflow experiments on a tracking server, with the server's artifact root.

The training and monitoring stages create a missing experiment with CTR_MLFLOW_ARTIFACTS as its
artifact location: a path on whichever machine gets there first, which no other machine can read.
Created here first, on a server started with `--serve-artifacts`, the experiments get the server's
root (`mlflow-artifacts:/<id>`): every Airflow worker and ranker replica then uploads and downloads
artifacts through the server. Run it once the server is up (the compose file's `mlflow-init` does);
running it again changes nothing.

    MLFLOW_TRACKING_URI=http://mlflow:5000 python infra/mlflow/create_experiments.py
"""

from __future__ import annotations

import sys

from models.settings import get_settings


def main() -> int:
    from mlflow import MlflowClient

    settings = get_settings()
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI={uri!r} is not a tracking server: nothing to do", file=sys.stderr)
        return 1
    tracking = MlflowClient(uri)
    local = []
    for name in (settings.experiment, f"{settings.experiment}-monitoring"):
        experiment = tracking.get_experiment_by_name(name)
        if experiment is None:
            experiment = tracking.get_experiment(tracking.create_experiment(name))
            print(f"created {name}: artifacts at {experiment.artifact_location}")
        else:
            print(f"exists  {name}: artifacts at {experiment.artifact_location}")
        if experiment.artifact_location.startswith(("file:", "/")):
            local.append(name)
    if local:
        print(
            f"{', '.join(local)}: artifacts on one machine's disk; other machines cannot load these "
            "models (delete the experiments, or create them here before anything else does)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
