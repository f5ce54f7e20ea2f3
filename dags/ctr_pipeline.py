"""
### ctr_pipeline

Raw Taobao behaviour events to a served CTR ranker, every stage real:

`ingest` → `validate` (Great Expectations; bad rows quarantined, a broken batch fails here) →
`apply_features` (`feast apply`) → `build_features` (daily snapshots to the offline store) →
`materialize` (SQLite/Redis online store) → `build_training_set` (point-in-time, through the
ranker FeatureService) → `train_xgboost` ‖ `train_wide_deep` (in parallel, queue `gpu`) →
`evaluate` (both models, popularity and logistic-regression baselines, later days) → `register`
(MLflow `ctr-xgboost` / `ctr-wide-deep`; `challenger`, promoted to `champion` only if it passes
the sanity checks and beats that model's champion). Beside training, `build_candidates` writes
the co-visitation and popularity lists `/recommend` draws candidates from.

Each task calls one function of `models.pipeline`; configuration comes from the environment
(see `models/settings.py` and `.env.example`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import chain, dag, task

DEFAULT_ARGS = {
    "owner": "ranking",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}


@dag(
    dag_id="ctr_pipeline",
    schedule=None,
    start_date=datetime(2017, 11, 25),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ctr", "features", "training"],
    doc_md=__doc__,
)
def ctr_pipeline():
    @task
    def ingest() -> dict:
        from models import pipeline

        return pipeline.ingest()

    @task(retries=0)  # a batch that breaks the suite will not pass on a retry
    def validate() -> dict:
        from models import pipeline

        return pipeline.validate()

    @task
    def apply_features() -> dict:
        from models import pipeline

        return pipeline.apply_features()

    @task
    def build_features() -> dict:
        from models import pipeline

        return pipeline.build_features()

    @task
    def materialize() -> dict:
        from models import pipeline

        return pipeline.materialize()

    @task
    def build_candidates() -> dict:
        from models import pipeline

        return pipeline.build_candidates()

    @task
    def build_training_set() -> dict:
        from models import pipeline

        return pipeline.build_training_set()

    # Both models train in parallel; CeleryExecutor workers started with `-q gpu` take them.
    @task(queue="gpu")
    def train_xgboost() -> dict:
        from models import pipeline

        return pipeline.train_xgboost()

    @task(queue="gpu")
    def train_wide_deep() -> dict:
        from models import pipeline

        return pipeline.train_wide_deep()

    @task
    def evaluate() -> dict:
        from models import pipeline

        return pipeline.evaluate()

    @task
    def register() -> dict:
        from models import pipeline

        return pipeline.register()

    validated = validate()
    registered = register()
    chain(
        ingest(),
        validated,
        apply_features(),
        build_features(),
        materialize(),
        build_training_set(),
        [train_xgboost(), train_wide_deep()],
        evaluate(),
        registered,
    )
    # Candidate lists for /recommend need only the accepted events: built beside training.
    chain(validated, build_candidates(), registered)


ctr_pipeline()
