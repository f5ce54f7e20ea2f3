"""Great Expectations validation of canonical events, with row-level quarantine.

The suite is the only place the rules live: rows that GX lists as unexpected go to quarantine,
the rest are accepted, and input rows = accepted + quarantined always. A batch fails as a whole
when a rule is broken by more than `max_bad_row_fraction` of its rows, or the schema is wrong.

A batch too large for memory (a day at full size) is validated in chunks (`validate_batches`):
every chunk goes through the same suite and checkpoint, and the verdict is the whole batch's, from
the chunks' counts summed per rule (a rule broken by 2 % of one chunk and by none of the others
may still pass). Repeated rows are found across the whole batch before any chunk is checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from feature_repo.contract import BEHAVIOR, BEHAVIORS, EVENT_COLUMNS, EVENT_TIMESTAMP, ID_COLUMNS
from models.data.events import repeated_rows

if TYPE_CHECKING:
    from models.settings import Settings

SUITE_NAME = "canonical_events"
FAILED_CHECKS = "failed_checks"
# Set on a row that repeats an earlier row of the batch (in any chunk) field for field: the earlier
# row's source line. A repeated delivery is one event; the repeat is quarantined, the first copy kept.
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

    A file-backed GX project is not safe for concurrent writers: every batch rewrites the suite, the
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


@dataclass
class _Tally:
    """One expectation's result summed over the chunks of a batch."""

    label: str
    type: str
    column: str | None
    map_rule: bool = False  # a per-row rule, judged by `mostly` over the summed counts
    chunk_success: bool = True  # a rule of the table (schema, row count): every chunk passed
    elements: int = 0
    missing: int = 0
    unexpected: int = 0
    sample: list[Any] = field(default_factory=list)
    raised: str | None = None

    def add(self, check: Any) -> None:
        observed = check.result or {}
        self.chunk_success &= bool(check.success)
        if observed.get("unexpected_count") is not None:
            self.map_rule = True
            self.elements += int(observed.get("element_count") or 0)
            self.missing += int(observed.get("missing_count") or 0)
            self.unexpected += int(observed["unexpected_count"])
            self.sample += list(observed.get("partial_unexpected_list") or [])[: 20 - len(self.sample)]
        if check.exception_info and check.exception_info.get("raised_exception") and self.raised is None:
            self.raised = str(check.exception_info.get("exception_message"))

    def success(self, mostly: float) -> bool:
        """GX's own rule (`_mostly_success`), over the rows considered in every chunk."""
        if not self.map_rule:
            return self.chunk_success
        considered = self.elements - self.missing
        if self.elements == 0 or considered == 0:
            return True
        return (float(considered) - float(self.unexpected)) / float(considered) >= mostly

    def describe(self) -> str:
        """As GX reports the rule: rows and share over the rows it considered, a few examples."""
        considered = self.elements - self.missing
        detail = ""
        if self.map_rule and self.elements > 0 and considered > 0:
            detail = f" ({self.unexpected} rows, {self.unexpected / considered * 100:.2f}%)"
        examples = f", e.g. {self.sample[:3]}" if self.sample else ""
        return f"{self.type}{f'[{self.column}]' if self.column else ''}{detail}{examples}"


@dataclass
class ValidationVerdict:
    """The verdict on a batch validated in chunks: counts, the failed rules and GX's statistics."""

    success: bool
    input_rows: int
    accepted_rows: int
    quarantined_rows: int
    failures: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    chunks: int = 1

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "input_rows": self.input_rows,
            "accepted_rows": self.accepted_rows,
            "quarantined_rows": self.quarantined_rows,
            "failures": self.failures,
            "statistics": self.statistics,
        }


ChunkSink = Callable[[pd.DataFrame, pd.DataFrame], None]  # (accepted, quarantined) rows of one chunk


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
    (`project_lock`); the checks themselves need no project. The whole batch is one chunk here;
    `validate_batches` takes one too large for memory.
    """
    accepted: list[pd.DataFrame] = []
    quarantined: list[pd.DataFrame] = []

    def keep(good: pd.DataFrame, bad: pd.DataFrame) -> None:
        accepted.append(good)
        quarantined.append(bad)

    frame = events.reset_index(drop=True)
    verdict = validate_batches(
        lambda: [frame], window_start, window_end, max_bad_row_fraction, keep, project_root
    )
    return ValidationOutcome(
        success=verdict.success,
        accepted=accepted[0],
        quarantined=quarantined[0],
        failures=verdict.failures,
        statistics=verdict.statistics,
    )


def validate_batches(
    chunks: Callable[[], Iterable[pd.DataFrame]],
    window_start: datetime,
    window_end: datetime,
    max_bad_row_fraction: float,
    sink: ChunkSink,
    project_root: Path | None = None,
    chunk_count: int | None = None,
) -> ValidationVerdict:
    """Validate one batch given as chunks (`chunks()` gives them afresh, in order; they are read
    twice, three times when `chunk_count` is not given): the repeated rows over the whole batch
    first, then each chunk through the suite and checkpoint, its accepted and quarantined rows
    handed to `sink`, then the verdict from the counts summed per rule. Memory is bounded by a
    chunk, whatever the batch's size.

    With `project_root`, every chunk's result is kept in the GX project (its run name says which
    chunk of how many when there are several) and the Data Docs are rebuilt after the last; the
    project is held (`project_lock`) for the whole batch. The suite, its validation definition and
    the checkpoint are saved once per batch, and the checkpoint runs again for each chunk.
    """
    gx = _gx()
    repeats = repeated_rows(chunks)
    total = chunk_count if chunk_count is not None else sum(1 for _ in chunks())
    span = f"{pd.Timestamp(window_start):%Y-%m-%d %H:%M}..{pd.Timestamp(window_end):%Y-%m-%d %H:%M}"
    tallies: dict[str, _Tally] = {}
    statistics: dict[str, Any] = {}
    rows = {"input": 0, "accepted": 0, "quarantined": 0}
    number = 0
    with contextlib.ExitStack() as stack:
        if project_root is None:
            context = gx.get_context(mode="ephemeral")
            docs: list[Any] = []
        else:
            from great_expectations.checkpoint import UpdateDataDocsAction

            stack.enter_context(project_lock(Path(project_root) / "gx"))
            context = gx.get_context(mode="file", project_root_dir=str(project_root))
            docs = [UpdateDataDocsAction(name="update_data_docs")]
        # the Data Docs are rebuilt by the last chunk's run only
        checkpoint = _checkpoint(
            gx, context, docs if total <= 1 else [], window_start, window_end, max_bad_row_fraction
        )
        for chunk in chunks():
            number += 1
            frame = chunk.reset_index(drop=True)
            offset = rows["input"]
            mine = repeats[(repeats.index >= offset) & (repeats.index < offset + len(frame))]
            frame[REPEAT_OF] = pd.Series(pd.NA, index=frame.index, dtype="Int64")
            frame.loc[mine.index.to_numpy() - offset, REPEAT_OF] = mine.to_numpy()
            run_name = span if total == 1 else f"{span} chunk {number} of {total}"
            if number == total and total > 1 and docs:
                checkpoint.actions = docs
                checkpoint = context.checkpoints.add_or_update(checkpoint)
            result = _run_checkpoint(gx, checkpoint, _as_checked(frame), run_name)
            accepted, quarantined = _split(frame, result)
            for check in result.results:
                name = check.expectation_config.type
                column = check.expectation_config.kwargs.get("column")
                label = f"{name}[{column}]" if column else name
                tallies.setdefault(label, _Tally(label, name, column)).add(check)
            statistics = dict(result.statistics)
            rows["input"] += len(frame)
            rows["accepted"] += len(accepted)
            rows["quarantined"] += len(quarantined)
            sink(accepted, quarantined)
    mostly = 1.0 - max_bad_row_fraction
    failures = [t.describe() for t in tallies.values() if not t.success(mostly)]
    failures += [f"{t.label} raised {t.raised}" for t in tallies.values() if t.success(mostly) and t.raised]
    if number > 1:  # the batch's statistics: the rules judged over the summed counts
        passed = sum(t.success(mostly) for t in tallies.values())
        statistics = {
            "evaluated_expectations": len(tallies),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(tallies) - passed,
            "success_percent": passed / len(tallies) * 100 if tallies else None,
        }
    return ValidationVerdict(
        success=not failures,
        input_rows=rows["input"],
        accepted_rows=rows["accepted"],
        quarantined_rows=rows["quarantined"],
        failures=failures,
        statistics=statistics,
        chunks=number,
    )


def _as_checked(frame: pd.DataFrame) -> pd.DataFrame:
    """The chunk as GX is given it: an id column with no missing and no negative value as plain
    int64, which GX's range rule checks vectorised instead of row by row in Python (a nullable
    column's path). The values are the same, so every result is; a column with a value the rules
    flag is left as it is, so the examples GX reports keep their form."""
    plain = [
        c
        for c in ID_COLUMNS
        if c in frame
        and isinstance(frame[c].dtype, pd.Int64Dtype)
        and not frame[c].hasnans
        and not frame[c].lt(0).any()
    ]
    return frame.astype(dict.fromkeys(plain, "int64")) if plain else frame


def _checkpoint(
    gx: Any,
    context: Any,
    actions: list[Any],
    window_start: datetime,
    window_end: datetime,
    max_bad_row_fraction: float,
) -> Any:
    """The suite for this window, its validation definition over a whole-dataframe batch and the
    checkpoint that runs it, saved into `context`."""
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
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )


def _run_checkpoint(gx: Any, checkpoint: Any, frame: pd.DataFrame, run_name: str) -> Any:
    """The checkpoint run over `frame`; the validation result."""
    run = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=gx.RunIdentifier(run_name=run_name))
    (result,) = run.run_results.values()
    return result


def _split(frame: pd.DataFrame, result: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accepted and quarantined rows of `frame` from a GX validation result."""
    bad_rows: dict[int, list[str]] = {}
    for check in result.results:
        name = check.expectation_config.type
        column = check.expectation_config.kwargs.get("column")
        label = f"{name}[{column}]" if column else name
        for index in (check.result or {}).get("unexpected_index_list") or []:
            row = index if isinstance(index, int) else int(next(iter(index.values())))
            bad_rows.setdefault(row, []).append(label)
    is_bad = frame.index.isin(list(bad_rows))
    quarantined = frame[is_bad].copy()
    quarantined[FAILED_CHECKS] = [";".join(bad_rows[i]) for i in quarantined.index]
    accepted = frame[~is_bad].drop(columns=REPEAT_OF).reset_index(drop=True)
    return accepted, quarantined.reset_index(drop=True)


class QuarantineWriter:
    """A batch's quarantine folder written chunk by chunk: `rows.parquet` and `rows.csv` (all the
    quarantined rows, in order, string columns as strings) and, at `close`, `report.json`."""

    def __init__(self, quarantine_dir: Path) -> None:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        self.dir = quarantine_dir
        self._parquet: Any = None
        self._schema: Any = None
        self._first: pd.DataFrame | None = None
        (quarantine_dir / "rows.csv").unlink(missing_ok=True)

    def write(self, quarantined: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        quarantined = quarantined.copy()
        for column in quarantined.columns:
            if quarantined[column].dtype == object or str(quarantined[column].dtype) == "string":
                quarantined[column] = quarantined[column].astype("string")
        if self._first is None:
            self._first = quarantined.head(0)
        if quarantined.empty:
            return
        if self._parquet is None:
            self._schema = pa.Table.from_pandas(quarantined, preserve_index=False).schema
            self._parquet = pq.ParquetWriter(self.dir / "rows.parquet", self._schema)
        self._parquet.write_table(
            pa.Table.from_pandas(quarantined, schema=self._schema, preserve_index=False)
        )
        csv = self.dir / "rows.csv"
        quarantined.astype("string").to_csv(csv, index=False, mode="a", header=not csv.exists())

    def close(self, summary: dict[str, Any]) -> Path:
        """Finish the rows' files (empty ones when nothing was quarantined) and write the report."""
        if self._parquet is not None:
            self._parquet.close()
        else:
            empty = self._first if self._first is not None else pd.DataFrame()
            empty.to_parquet(self.dir / "rows.parquet", index=False)
            empty.astype("string").to_csv(self.dir / "rows.csv", index=False)
        report = self.dir / "report.json"
        report.write_text(json.dumps(summary, indent=2, default=str))
        return report


def write_outcome(outcome: ValidationOutcome, quarantine_dir: Path) -> Path:
    """Write quarantined rows and the report; return the report path."""
    writer = QuarantineWriter(quarantine_dir)
    writer.write(outcome.quarantined)
    return writer.close(outcome.summary())


def raise_for_failures(outcome: ValidationOutcome | ValidationVerdict, report: Path) -> None:
    if not outcome.success:
        summary = outcome.summary()
        raise DataValidationError(
            f"Event batch failed validation ({summary['quarantined_rows']} of "
            f"{summary['input_rows']} rows quarantined, report {report}):\n  - "
            + "\n  - ".join(outcome.failures or ["the suite did not pass"])
        )


def validate_partition(settings: Settings, day: pd.Timestamp) -> tuple[ValidationVerdict, Path]:
    """One day's `ingested` partition through the suite, CTR_INGEST_BATCH_ROWS rows at a time: its
    quarantine folder and report, and its `accepted` partition when the day passes. A broken day
    gets none (an older one is removed), so nothing downstream reads it; the verdict is the day's."""
    from models.data import lake

    quarantine = QuarantineWriter(settings.paths.quarantine / lake.partition_name(day))
    accepted: list[lake.PartitionWriter] = []

    def chunks() -> Iterator[pd.DataFrame]:
        return lake.iter_partition(settings, lake.INGESTED, day, settings.ingest_batch_rows)

    def keep(good: pd.DataFrame, bad: pd.DataFrame) -> None:
        if not accepted:
            accepted.append(lake.partition_writer(settings, lake.ACCEPTED, day, good))
        accepted[0].write(good)
        quarantine.write(bad)

    until = day + pd.Timedelta(days=1)
    rows = lake.partition_rows(settings, lake.INGESTED, day)
    count = max(1, -(-rows // settings.ingest_batch_rows))  # as many as iter_partition gives
    try:
        verdict = validate_batches(
            chunks, day, until, settings.max_bad_row_fraction, keep, settings.data_dir, chunk_count=count
        )
    except BaseException:
        for writer in accepted:
            writer.abort()
        raise
    report = quarantine.close(verdict.summary())
    if verdict.success:
        accepted[0].commit()
    else:
        for writer in accepted:
            writer.abort()
        lake.remove_partition(settings, lake.ACCEPTED, day)
    return verdict, report
