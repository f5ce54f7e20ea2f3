"""
### ctr_deployment — ship a new champion

Runs when `ctr_training` promotes a champion (asset `ctr_champion_model`), or by hand.

`build_bento` (`bentoml build` of `services/bentofile.yaml`, into `<data dir>/bentoml`) →
`smoke_test` (serves that Bento on a free loopback port against the real online store and registry,
ranks a known user's items and checks the served version is the champion) → `reload_service` (asks
the running ranker at `CTR_SERVICE_URL` to reload its models; skipped when none is configured) →
`record_deployment` (a line in `<data dir>/deployments/deployments.jsonl` and tags on the MLflow
model version).
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from models.ops.orchestration import CHAMPION_MODEL, DEFAULT_ARGS
from models.settings import get_settings

settings = get_settings()


@dag(
    dag_id="ctr_deployment",
    schedule=Asset(CHAMPION_MODEL),
    start_date=settings.window_start,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ctr", "deployment"],
    doc_md=__doc__,
)
def ctr_deployment():
    @task
    def build_bento() -> dict:
        from models.ops import deployment

        return deployment.build_bento(get_settings())

    @task(retries=1)
    def smoke_test(bento: dict) -> dict:
        from models.ops import deployment

        return deployment.smoke_test(get_settings(), bento["tag"])

    @task
    def reload_service(smoke: dict) -> dict:
        from models.ops import deployment

        return deployment.reload_service(get_settings())

    @task
    def record_deployment(bento: dict, smoke: dict, reload: dict) -> dict:
        from models.ops import deployment

        summary = {"build": bento, "smoke_test": smoke, "reload": reload}
        return deployment.record_deployment(get_settings(), summary)

    bento = build_bento()
    smoke = smoke_test(bento)
    record_deployment(bento, smoke, reload_service(smoke))


ctr_deployment()
