"""
### ctr_training — train, evaluate and gate both models

Runs when the online features change (asset `ctr_online_features`), once the whole training window
(`CTR_WINDOW_START` .. `CTR_WINDOW_END`) has accepted events; until then `training_ready` skips
the run.

`build_training_set` (labelled page views joined point-in-time through the FeatureService
`ctr_ranker_realtime_v1`) → `train_xgboost` ‖ `train_wide_deep` (in parallel on queue `gpu`:
CeleryExecutor workers started with `--queues gpu` take them; each uses a GPU when one is visible, and
records the worker, queue and device in its log and the model's MLflow run) →
`evaluate` (both models and two baselines on the test days) → `register` (MLflow `challenger`;
`champion` only if sane and better than the current one) → `publish_champion` updates the asset
`ctr_champion_model`, which triggers `ctr_deployment`, only when a champion changed.
"""

from __future__ import annotations

from airflow.sdk import Asset, chain, dag, task

from models.ops.orchestration import CHAMPION_MODEL, DEFAULT_ARGS, ONLINE_FEATURES
from models.settings import get_settings

settings = get_settings()


@dag(
    dag_id="ctr_training",
    schedule=Asset(ONLINE_FEATURES),
    start_date=settings.window_start,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ctr", "training"],
    doc_md=__doc__,
)
def ctr_training():
    @task.short_circuit
    def training_ready() -> bool:
        from models import pipeline

        readiness = pipeline.training_readiness()
        print(f"days of the training window without accepted events: {readiness.missing_days or 'none'}")
        return readiness.ready

    @task
    def build_training_set() -> dict:
        from models import pipeline

        return pipeline.build_training_set().to_dict()

    @task(queue="gpu")
    def train_xgboost(ti=None) -> dict:
        from models import pipeline

        return pipeline.train_xgboost(host=ti.hostname, queue=ti.queue).to_dict()

    @task(queue="gpu")
    def train_wide_deep(ti=None) -> dict:
        from models import pipeline

        return pipeline.train_wide_deep(host=ti.hostname, queue=ti.queue).to_dict()

    @task
    def evaluate() -> dict:
        from models import pipeline

        return pipeline.evaluate()

    @task
    def register() -> dict:
        from models import pipeline

        return pipeline.register()

    @task.short_circuit
    def champion_changed(decisions: dict) -> bool:
        from models.pipeline import new_champions

        return bool(new_champions(decisions))

    @task(outlets=[Asset(CHAMPION_MODEL)])
    def publish_champion(decisions: dict) -> dict:
        from models.pipeline import new_champions

        return new_champions(decisions)

    decisions = register()
    chain(
        training_ready(),
        build_training_set(),
        [train_xgboost(), train_wide_deep()],
        evaluate(),
        decisions,
        champion_changed(decisions),
        publish_champion(decisions),
    )


ctr_training()
