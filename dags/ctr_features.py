"""
### ctr_features — the daily feature pipeline

One run per local day of the data (`CTR_TIMEZONE`, Asia/Shanghai by default) inside
`CTR_WINDOW_START` .. `CTR_WINDOW_END`; a run's logical date is its day's local midnight. Past days
run through a backfill: `ctr backfill 2017-11-25 2017-11-26` runs those two local days (and unpauses
the DAG, as the scheduler runs nothing of a paused DAG). It does not catch up: unpausing it runs
each day that ends from then on, never a past one. A manual run with `{"days": N}` processes the N
days ending at its data interval's end (the end of the window when it has none).

`ingest` (raw CSV + live event log → `lake/ingested/date=…`) → `validate` (Great Expectations per
day: bad rows to `quarantine/date=…`; a broken day fails the task and nothing downstream runs; the
log links the Data Docs) → `apply_features` (`feast apply`) → `build_features` (the days'
snapshots and short-term state replace their rows in the offline sources) → `materialize` (into the
online store; updates the asset `ctr_online_features`, which triggers `ctr_training`).
`build_candidates` refreshes the lists `/recommend` draws from.

Every output is a whole file per day or a replace-by-day, so re-running a day or a range gives the
same rows. Configuration: environment variables, see `.env.example`.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, chain, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from models.ops.orchestration import DEFAULT_ARGS, ONLINE_FEATURES, inside_window, run_interval
from models.settings import get_settings

settings = get_settings()


@dag(
    dag_id="ctr_features",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=settings.timezone),
    start_date=settings.window_start,
    end_date=settings.window_end,
    catchup=False,  # past days run through `ctr backfill`, never beside it on unpausing
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"days": Param(1, type="integer", minimum=1, description="days ending at the interval's end")},
    tags=["ctr", "features"],
    doc_md=__doc__,
)
def ctr_features():
    @task.short_circuit
    def in_window(**context) -> bool:
        return inside_window(context)

    @task
    def ingest(**context) -> dict:
        from models import pipeline

        return pipeline.ingest(None, *run_interval(context)).to_dict()

    @task(retries=0)  # a batch that breaks the suite will not pass on a retry
    def validate(**context) -> dict:
        from models import pipeline

        return pipeline.validate(None, *run_interval(context)).to_dict()

    @task
    def apply_features() -> dict:
        from models import pipeline

        return pipeline.apply_features().to_dict()

    @task
    def build_features(**context) -> dict:
        from models import pipeline

        return pipeline.build_features(None, *run_interval(context)).to_dict()

    @task(outlets=[Asset(ONLINE_FEATURES)])
    def materialize(**context) -> dict:
        from models import pipeline

        return pipeline.materialize(None, *run_interval(context)).to_dict()

    @task
    def build_candidates() -> dict:
        from models import pipeline

        return pipeline.build_candidates().to_dict()

    validated = validate()
    chain(in_window(), ingest(), validated, apply_features(), build_features(), materialize())
    chain(validated, build_candidates())


ctr_features()
