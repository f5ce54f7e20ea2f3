"""
### ctr_monitoring — how the served models do, every day

At 06:00 shop time (`CTR_TIMEZONE`) it judges the previous day of the serving log
(`CTR_SERVING_LOG`), once every served ranking has had the label window (6 h) for its outcome.

`readout` joins the served rows with what shoppers did next (accepted events and the live event
log) and computes, per variant (`champion` / `challenger`), online click and conversion rates, the
online AUC and a two-proportion z-test; population stability of every served feature against the
training set; catalogue coverage, exposure Gini and intra-list diversity. Everything goes to the
MLflow experiment `<CTR_EXPERIMENT>-monitoring` with plots. `check_thresholds` fails when a
`CTR_MONITOR_*` threshold is crossed, so the failure callback alerts (`CTR_ALERT_WEBHOOK`).
"""

from __future__ import annotations

from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from models.ops.orchestration import DEFAULT_ARGS, monitored_window
from models.settings import get_settings

settings = get_settings()


@dag(
    dag_id="ctr_monitoring",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone=settings.timezone),
    start_date=settings.window_start,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["ctr", "monitoring"],
    doc_md=__doc__,
)
def ctr_monitoring():
    @task
    def readout(**context) -> dict:
        from models import pipeline

        return pipeline.monitor(None, *monitored_window(context)).to_dict()

    @task(retries=0)  # a crossed threshold is an alert, not a transient failure
    def check_thresholds(summary: dict) -> dict:
        from models import pipeline

        return pipeline.check_thresholds(summary)

    check_thresholds(readout())


ctr_monitoring()
