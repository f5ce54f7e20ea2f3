"""What the DAGs share: default task arguments, the assets that link them, the data interval a run
works on, and the failure alert. DAG files import this and stay wiring only."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from models.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Asset names: the online store after a feature run, and a newly promoted champion.
ONLINE_FEATURES = "ctr_online_features"
CHAMPION_MODEL = "ctr_champion_model"


class IntervalOutsideWindow(ValueError):
    """The run's data interval has no day inside CTR_WINDOW_START .. CTR_WINDOW_END."""


def run_interval(context: dict[str, Any], settings: Settings | None = None) -> tuple[datetime, datetime]:
    """The days a feature run processes: the `days` (param, default 1) ending at its data interval's
    end, inside the configured window. A run whose interval ends after the window (a manual run
    today) ends at the window's end, so `{"days": 9}` processes the whole Taobao window in one run."""
    settings = settings or get_settings()
    given = context.get("data_interval_end") or settings.window_end
    end = min(pd.Timestamp(given), pd.Timestamp(settings.window_end))
    days = int((context.get("params") or {}).get("days") or 1)
    start = max(end - pd.Timedelta(days=days), pd.Timestamp(settings.window_start))
    if start >= end:
        raise IntervalOutsideWindow(
            f"The run's interval ending {given} has no day inside the configured window "
            f"{settings.window_start} .. {settings.window_end} (CTR_WINDOW_START / CTR_WINDOW_END)"
        )
    return start.to_pydatetime(), end.to_pydatetime()


def inside_window(context: dict[str, Any], settings: Settings | None = None) -> bool:
    """Whether a run's data interval starts inside the configured window (a scheduled run after it
    has nothing to process and is skipped)."""
    settings = settings or get_settings()
    start = context.get("data_interval_start")
    return start is None or pd.Timestamp(start) < pd.Timestamp(settings.window_end)


def monitored_window(context: dict[str, Any]) -> tuple[datetime, datetime]:
    """The serving window a monitoring run judges: its data interval moved back by the label window,
    so every served row has had LABEL_WINDOW for its outcome (a run at 06:00 judges the day before)."""
    from feature_repo.contract import LABEL_WINDOW

    end = context.get("data_interval_end") or datetime.now().astimezone()
    start = context.get("data_interval_start") or pd.Timestamp(end) - pd.Timedelta(days=1)
    return (
        (pd.Timestamp(start) - LABEL_WINDOW).to_pydatetime(),
        (pd.Timestamp(end) - LABEL_WINDOW).to_pydatetime(),
    )


def notify_failure(context: dict[str, Any]) -> None:
    """Failure callback of every task: one line in the task log, one JSON line in
    `settings.paths.alerts` (<data dir>/alerts/alerts.jsonl), and a POST to CTR_ALERT_WEBHOOK when
    it is set."""
    settings = get_settings()
    ti = context.get("ti") or context.get("task_instance")
    alert = {
        "at": datetime.now().astimezone().isoformat(),
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "error": str(context.get("exception") or "")[:2000],
    }
    log.error("ALERT %(dag_id)s.%(task_id)s failed in %(run_id)s: %(error)s", alert)
    settings.paths.alerts.parent.mkdir(parents=True, exist_ok=True)
    with settings.paths.alerts.open("a") as out:
        out.write(json.dumps(alert) + "\n")
    if settings.alert_webhook:
        import httpx

        try:
            httpx.post(settings.alert_webhook, json=alert, timeout=10).raise_for_status()
        except httpx.HTTPError as error:  # the alert is in the log and the file either way
            log.error("alert webhook %s failed: %s", settings.alert_webhook, error)


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ranking",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": notify_failure,
}
