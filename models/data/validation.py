"""Great Expectations validation of canonical events, with row-level quarantine.

The suite is the only place the rules live: rows that GX lists as unexpected go to quarantine,
the rest are accepted, and input rows = accepted + quarantined always. A batch fails as a whole
when a rule is broken by more than `max_bad_row_fraction` of its rows, or the schema is wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from feature_repo.contract import BEHAVIOR, BEHAVIORS, EVENT_COLUMNS, EVENT_TIMESTAMP, ID_COLUMNS
from models.data.events import SOURCE_ROW

SUITE_NAME = "canonical_events"
FAILED_CHECKS = "failed_checks"
# Set on a row that repeats an earlier row of the batch field for field: the earlier row's source
# line. A repeated delivery is one event; the repeat is quarantined, the first copy kept.
REPEAT_OF = "repeat_of"
# The file in a GX project folder that its writers hold while they use it, and how long one waits for
# another before giving up: a validation holds it for seconds.
PROJECT_LOCK = ".lock"
PROJECT_LOCK_TIMEOUT_S = 600.0

log = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """The batch broke the event suite; the message lists the failed expectations."""


@dataclass
class ValidationOutcome:
    success: bool
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "input_rows": len(self.accepted) + len(self.quarantined),
            "accepted_rows": len(self.accepted),
            "quarantined_rows": len(self.quarantined),
            "failures": self.failures,
            "statistics": self.statistics,
        }


def _gx():
    # GX registers ~200 metric functions noisily when Airflow is imported first.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


@contextlib.contextmanager
def project_lock(gx_dir: Path, timeout_s: float = PROJECT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the GX project in `gx_dir` for this process alone.

    A file-backed GX project is not safe for concurrent writers: every run rewrites the suite, the
    validation definition and the checkpoint, and a run that reads a file another is rewriting fails
    (a half-written suite, or one that "has changed since it has last been saved"). Runs that
    overlap (a backfill beside the schedule, several Celery workers) take turns through an exclusive
    `flock` on `<gx_dir>/.lock`, which the system releases when its holder exits, however it exits.
    """
    gx_dir.mkdir(parents=True, exist_ok=True)
    path = gx_dir / PROJECT_LOCK
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"The Great Expectations project {gx_dir} stayed in use by another validation "
                        f"for {timeout_s:.0f} s (lock {path})"
                    ) from None
                if not waited:
                    log.info("waiting for another validation to finish with %s", gx_dir)
                    waited = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_suite(window_start: datetime, window_end: datetime, mostly: float) -> Any:
    """The event suite: schema, ids present, known behaviours, timestamps inside the window, no
    repeated rows."""
    gx = _gx()
    ex = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for column in EVENT_COLUMNS:
        suite.add_expectation(ex.ExpectColumnToExist(column=column))
    suite.add_expectation(ex.ExpectTableRowCountToBeBetween(min_value=1))
    for column in (*ID_COLUMNS, EVENT_TIMESTAMP):
        suite.add_expectation(ex.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly))
    for column in ID_COLUMNS:
        suite.add_expectation(ex.ExpectColumnValuesToBeBetween(column=column, min_value=0, mostly=mostly))
    suite.add_expectation(
        ex.ExpectColumnValuesToBeInSet(column=BEHAVIOR, value_set=list(BEHAVIORS), mostly=mostly)
    )
    suite.add_expectation(
        ex.ExpectColumnValuesToBeBetween(
            column=EVENT_TIMESTAMP,
            min_value=pd.Timestamp(window_start).tz_convert("UTC"),
            max_value=pd.Timestamp(window_end).tz_convert("UTC"),
            strict_max=True,
            mostly=mostly,
        )
    )
    suite.add_expectation(ex.ExpectColumnValuesToBeNull(column=REPEAT_OF, mostly=mostly))
    return suite


def repeat_of(events: pd.DataFrame) -> pd.Series:
    """For each row, the source line of an earlier identical row of the batch, else null."""
    columns = list(EVENT_COLUMNS)
    if not set(columns) <= set(events.columns) or events.empty:
        return pd.Series(pd.NA, index=events.index, dtype="Int64")
    line = events[SOURCE_ROW] if SOURCE_ROW in events else pd.Series(events.index, index=events.index)
    first = line.groupby([events[c] for c in columns], dropna=False, sort=False).transform("first")
    return first.where(events.duplicated(columns, keep="first")).astype("Int64")


def _describe(result: Any) -> str:
    config = result.expectation_config
    column = config.kwargs.get("column")
    observed = result.result or {}
    share = observed.get("unexpected_percent")
    detail = f" ({observed.get('unexpected_count')} rows, {share:.2f}%)" if share is not None else ""
    sample = observed.get("partial_unexpected_list")
    examples = f", e.g. {sample[:3]}" if sample else ""
    return f"{config.type}{f'[{column}]' if column else ''}{detail}{examples}"


def validate_events(
    events: pd.DataFrame,
    window_start: datetime,
    window_end: datetime,
    max_bad_row_fraction: float,
    project_root: Path | None = None,
) -> ValidationOutcome:
    """Run the suite through a GX checkpoint and split the batch into accepted and quarantined rows.

    With `project_root`, the run is kept in a file-backed GX project there (`<root>/gx/`) and its
    Data Docs are rebuilt, so every validated batch can be opened in a browser; without, nothing is
    written. Validations that share a project, in any number of processes, take turns with it
    (`project_lock`); the checks themselves need no project.
    """
    gx = _gx()
    frame = events.reset_index(drop=True)
    frame[REPEAT_OF] = repeat_of(frame)
    if project_root is None:
        result = _run_checkpoint(
            gx, gx.get_context(mode="ephemeral"), [], frame, window_start, window_end, max_bad_row_fraction
        )
    else:
        from great_expectations.checkpoint import UpdateDataDocsAction

        with project_lock(Path(project_root) / "gx"):
            context = gx.get_context(mode="file", project_root_dir=str(project_root))
            actions = [UpdateDataDocsAction(name="update_data_docs")]
            result = _run_checkpoint(
                gx, context, actions, frame, window_start, window_end, max_bad_row_fraction
            )
    return _outcome(frame, result)


def _run_checkpoint(
    gx: Any,
    context: Any,
    actions: list[Any],
    frame: pd.DataFrame,
    window_start: datetime,
    window_end: datetime,
    max_bad_row_fraction: float,
) -> Any:
    """The suite for this window saved into `context` and run over `frame`; the validation result."""
    source = context.data_sources.add_or_update_pandas("events")
    asset = next((a for a in source.assets if a.name == "canonical_events"), None)
    asset = asset or source.add_dataframe_asset("canonical_events")
    batch = next((b for b in asset.batch_definitions if b.name == "batch"), None)
    batch = batch or asset.add_batch_definition_whole_dataframe("batch")
    suite = context.suites.add_or_update(
        build_suite(window_start, window_end, mostly=1.0 - max_bad_row_fraction)
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    span = f"{pd.Timestamp(window_start):%Y-%m-%d %H:%M}..{pd.Timestamp(window_end):%Y-%m-%d %H:%M}"
    run_id = gx.RunIdentifier(run_name=span)
    run = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    (result,) = run.run_results.values()
    return result


def _outcome(frame: pd.DataFrame, result: Any) -> ValidationOutcome:
    """Accepted and quarantined rows of `frame` from a GX validation result."""
    bad_rows: dict[int, list[str]] = {}
    failures: list[str] = []
    for check in result.results:
        name = check.expectation_config.type
        column = check.expectation_config.kwargs.get("column")
        label = f"{name}[{column}]" if column else name
        for index in (check.result or {}).get("unexpected_index_list") or []:
            row = index if isinstance(index, int) else int(next(iter(index.values())))
            bad_rows.setdefault(row, []).append(label)
        if not check.success:
            failures.append(_describe(check))
        elif check.exception_info and check.exception_info.get("raised_exception"):
            failures.append(f"{label} raised {check.exception_info.get('exception_message')}")

    is_bad = frame.index.isin(list(bad_rows))
    quarantined = frame[is_bad].copy()
    quarantined[FAILED_CHECKS] = [";".join(bad_rows[i]) for i in quarantined.index]
    return ValidationOutcome(
        success=bool(result.success) and not failures,
        accepted=frame[~is_bad].drop(columns=REPEAT_OF).reset_index(drop=True),
        quarantined=quarantined.reset_index(drop=True),
        failures=failures,
        statistics=dict(result.statistics),
    )


def write_outcome(outcome: ValidationOutcome, quarantine_dir: Path) -> Path:
    """Write quarantined rows and the report; return the report path."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    quarantined = outcome.quarantined.copy()
    for column in quarantined.columns:
        if quarantined[column].dtype == object or str(quarantined[column].dtype) == "string":
            quarantined[column] = quarantined[column].astype("string")
    quarantined.to_parquet(quarantine_dir / "rows.parquet", index=False)
    quarantined.astype("string").to_csv(quarantine_dir / "rows.csv", index=False)
    report = quarantine_dir / "report.json"
    report.write_text(json.dumps(outcome.summary(), indent=2, default=str))
    return report


def raise_for_failures(outcome: ValidationOutcome, report: Path) -> None:
    if not outcome.success:
        raise DataValidationError(
            f"Event batch failed validation ({len(outcome.quarantined)} of "
            f"{len(outcome.accepted) + len(outcome.quarantined)} rows quarantined, report {report}):\n  - "
            + "\n  - ".join(outcome.failures or ["the suite did not pass"])
        )
