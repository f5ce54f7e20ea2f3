"""Every file and folder the project keeps under the data dir (CTR_DATA_DIR), named in one place.

`get_settings().paths` is the one for the configured data dir. A few folders can be moved out of
it by a variable of their own (CTR_SERVING_LOG, CTR_CANDIDATES_DIR, CTR_EVENT_LOG,
CTR_MLFLOW_ARTIFACTS, AIRFLOW_HOME): models/settings.py reads those and passes them in; everything
else is a fixed name under the data dir. The feature repo may not import this module: the folder
of its offline sources is named in feature_repo/contract.py and only joined here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feature_repo.contract import OFFLINE_FOLDER


@dataclass(frozen=True)
class DataPaths:
    """The paths of one data dir; build it with `DataPaths.under(data_dir, ...)`."""

    root: Path  # the data dir
    serving_log: Path  # the ranker's served-ranking log (Parquet parts)
    candidates: Path  # the retrieval index: candidate lists per user history, category and hour
    event_log: Path  # the ingest service's offline event log
    mlflow_artifacts: Path  # artifact root of an MLflow experiment created here
    airflow: Path  # AIRFLOW_HOME: metadata DB, logs

    @classmethod
    def under(
        cls,
        root: Path,
        *,
        serving_log: Path | None = None,
        candidates: Path | None = None,
        event_log: Path | None = None,
        mlflow_artifacts: Path | None = None,
        airflow: Path | None = None,
    ) -> DataPaths:
        """The paths under `root`; a folder given here replaces its default under `root`."""
        return cls(
            root=root,
            serving_log=serving_log or root / "serving_log",
            candidates=candidates or root / "candidates",
            event_log=event_log or root / "events",
            mlflow_artifacts=mlflow_artifacts or root / "mlflow/artifacts",
            airflow=airflow or root / "airflow",
        )

    # --- Data: the lake and its validation ---------------------------------------------------

    @property
    def lake(self) -> Path:
        """Canonical and accepted events, one Parquet file per stage and day."""
        return self.root / "lake"

    @property
    def quarantine(self) -> Path:
        """Rows that failed validation, with a report, one folder per day."""
        return self.root / "quarantine"

    @property
    def gx(self) -> Path:
        """The Great Expectations project: suites, validation results and Data Docs."""
        return self.root / "gx"

    @property
    def data_docs(self) -> Path:
        """The Data Docs site's front page."""
        return self.gx / "uncommitted/data_docs/local_site/index.html"

    @property
    def pending_events(self) -> Path:
        """Events logged while the online store was down, not yet applied to it."""
        return self.event_log / "pending"

    # --- Features ----------------------------------------------------------------------------

    @property
    def offline(self) -> Path:
        """The offline sources of feature_repo/data_sources.py."""
        return self.root / OFFLINE_FOLDER

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def feast_registry(self) -> Path:
        """The default file registry (CTR_FEAST_REGISTRY)."""
        return self.feast / "registry.db"

    @property
    def feast_online_db(self) -> Path:
        """The SQLite online store (CTR_ONLINE_STORE=sqlite)."""
        return self.feast / "online.db"

    @property
    def feast_yaml(self) -> Path:
        """The effective feature_store.yaml the project writes for Feast's own CLI, FeatureStore()
        and `feast serve` (FEAST_FS_YAML_FILE_PATH): the same stores as the project's."""
        return self.feast / "feature_store.yaml"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def training_set(self) -> Path:
        """The point-in-time training set the models are trained and monitored against."""
        return self.datasets / "training_set.parquet"

    # --- Models ------------------------------------------------------------------------------

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def trained_models(self) -> Path:
        """The models trained by the last run, one folder per kind, before they are registered."""
        return self.models / "candidates"

    def trained_model_dir(self, kind: str) -> Path:
        """The trained model of one kind (xgboost, wide_deep)."""
        return self.trained_models / kind

    @property
    def evaluation(self) -> Path:
        """The test-day evaluation of the trained models, read by the promotion gate."""
        return self.trained_models / "evaluation.json"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        """The default MLflow tracking store (MLFLOW_TRACKING_URI)."""
        return self.mlflow / "mlflow.db"

    # --- Deployment and operations -----------------------------------------------------------

    @property
    def bentoml(self) -> Path:
        """The Bento store: BENTOML_HOME of the deployment's bentoml commands."""
        return self.root / "bentoml"

    def service_home(self, service: str) -> Path:
        """BENTOML_HOME of `ctr serve` / `ctr ingest` for one service (lower-case class name)."""
        return self.root / "services" / service

    @property
    def deployments(self) -> Path:
        return self.root / "deployments"

    @property
    def deployments_log(self) -> Path:
        """One JSON line per deployment."""
        return self.deployments / "deployments.jsonl"

    def smoke_test_dir(self, bento_tag: str) -> Path:
        """Working folder of one Bento's smoke test: its server log and serving log."""
        return self.deployments / "smoke" / bento_tag.replace(":", "-")

    @property
    def alerts(self) -> Path:
        """Failed tasks, one JSON line each."""
        return self.root / "alerts" / "alerts.jsonl"
