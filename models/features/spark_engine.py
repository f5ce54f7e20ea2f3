"""The batch feature job on Spark (CTR_ENGINE=spark): the definitions of
models/features/definitions.py, compiled by Ibis for PySpark, over the lake's day partitions.

The same Ibis expressions the DuckDB engine runs (models/features/engine.py) are handed to Spark
as SQL; only the binding of the events and the writing of the results are Spark's own:

* **The events** are the lake's Parquet files read by Spark, with each event's position (which
  decides between events of the same second) numbered as the DuckDB engine numbers it: the row's
  index in its file (`_metadata.row_index`) after the rows of the files before it.
* **The event id** (`ctr_event_id`, a scalar function the definitions call) is a pandas UDF
  running models.data.events.event_ids_of_columns, the function the DuckDB engine registers.
* **The offline sources** are Parquet datasets partitioned by local day (`date=YYYY-MM-DD`), as
  Spark and Feast's Spark offline store read them: a snapshot's day is its stamp's, a short-term
  state's the day of the event it follows. A run replaces the days of its interval and leaves the
  others as they are: its rows are written to a hidden staging folder inside the dataset
  (`_staging`, which readers skip), then each day of the interval is swapped in by one rename, or
  removed when the run has no rows for it. A run stopped before the swap leaves the dataset as it
  was; one stopped during it leaves every day whole, old or new, and a day it had removed missing
  until the rerun; the rerun clears the staging folder first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from feature_repo.contract import (
    BEHAVIORS,
    CATEGORY_VIEW,
    EVENT_COLUMNS,
    EVENT_TIMESTAMP,
    ITEM_VIEW,
    RECENT_STATE_DELAY,
    RECENT_VIEW,
    USER_VIEW,
)
from models.features import batch, definitions

if TYPE_CHECKING:
    import ibis.expr.types as ir
    from pyspark.sql import Column, DataFrame, SparkSession

# The partition column of every offline source written here.
PARTITION = "date"
STAGING = "_staging"
_RECENT_EVENTS = "recent_events"


def _event_ids(
    user: pd.Series, item: pd.Series, category: pd.Series, behavior: pd.Series, timestamp: pd.Series
) -> pd.Series:
    """models.data.events.event_ids of a batch of events, as Spark hands them to a pandas UDF (its
    timestamps without a zone, in the session's UTC)."""
    import numpy as np

    from models.data.events import event_ids_of_columns

    codes = pd.Categorical(behavior, categories=list(BEHAVIORS)).codes.astype(np.int64)
    micros = pd.to_datetime(timestamp, utc=True).dt.as_unit("us").astype("int64").to_numpy()
    seconds = np.floor_divide(micros, 1_000_000)
    columns = [c.to_numpy(np.int64) for c in (user, item, category)]
    return pd.Series(event_ids_of_columns(*columns, codes, seconds))


def register_functions(spark: SparkSession) -> None:
    """The scalar functions the definitions call, under the names they call them by."""
    from pyspark.sql import functions as F

    spark.udf.register(definitions.EVENT_ID_FUNCTION, F.pandas_udf(_event_ids, "long"))


def bind_parquet(
    spark: SparkSession,
    paths: Sequence[Path],
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    name: str = definitions.EVENTS_TABLE,
) -> int:
    """Make the temporary view `name` the events of these Parquet files (in this order) stamped in
    [start, end), positioned as the DuckDB engine positions them. Returns the rows in the files."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    frames, offset = [], 0
    for path in paths:
        rows = pq.ParquetFile(path).metadata.num_rows
        frame = spark.read.parquet(str(path)).select(
            *(F.col(c) for c in EVENT_COLUMNS),
            (F.col("_metadata.row_index") + F.lit(offset)).alias(definitions.EVENT_POSITION),
        )
        frames.append(frame)
        offset += rows
    if frames:
        events = frames[0]
        for frame in frames[1:]:
            events = events.unionByName(frame)
    else:
        types = {"int64": T.LongType(), "string": T.StringType()}
        schema = T.StructType(
            [T.StructField(c, types.get(t, T.TimestampType())) for c, t in definitions.EVENT_SCHEMA.items()]
        )
        events = spark.createDataFrame([], schema)
    stamp = F.col(EVENT_TIMESTAMP)
    if start is not None:
        events = events.where(stamp >= F.lit(pd.Timestamp(start).tz_convert("UTC").to_pydatetime()))
    if end is not None:
        events = events.where(stamp < F.lit(pd.Timestamp(end).tz_convert("UTC").to_pydatetime()))
    events.createOrReplaceTempView(name)
    return offset


def dataframe(spark: SparkSession, expr: ir.Table, name: str) -> DataFrame:
    """A definition as a Spark DataFrame (a temporary view `name`), its constant tables registered."""
    import ibis

    ibis.pyspark.connect(spark).create_view(name, expr, overwrite=True)
    return spark.table(name)


def local_day(column: Column, timezone: str) -> Column:
    """The local date (YYYY-MM-DD) of a UTC timestamp column."""
    from pyspark.sql import functions as F

    return F.date_format(F.from_utc_timestamp(column, timezone), "yyyy-MM-dd")


class _Files:
    """The Hadoop file system of a dataset: local folders, HDFS or object storage alike."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm = spark.sparkContext._jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._path(root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._path(path))

    def is_file(self, path: str) -> bool:
        return self.exists(path) and self.fs.getFileStatus(self._path(path)).isFile()

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete(self._path(path), True)

    def move(self, source: str, target: str) -> None:
        self.fs.mkdirs(self._path(target).getParent())
        if not self.fs.rename(self._path(source), self._path(target)):
            raise OSError(f"Could not move {source} to {target}")


def replace_days(
    spark: SparkSession, frame: DataFrame, path: Path | str, days: Sequence[str], day: Column
) -> int:
    """Replace the partitions `days` of the dataset at `path` by the rows of `frame`, partitioned by
    `day` (a column expression of each row); returns the rows written. Rows outside `days` are an
    error: they would be partitions the interval does not own."""
    from pyspark.sql import functions as F

    root = str(path)
    files = _Files(spark, root)
    if files.is_file(root):
        raise ValueError(
            f"{root} is a single Parquet file, as the local engine writes an offline source; the Spark "
            "engine writes a dataset partitioned by day there. Build into another CTR_DATA_DIR, or "
            "remove the file to rebuild it on Spark."
        )
    staging = f"{root}/{STAGING}"
    files.delete(staging)  # what a stopped run left
    frame.withColumn(PARTITION, day).write.mode("overwrite").partitionBy(PARTITION).parquet(staging)
    staged = spark.read.parquet(staging)
    per_day = {row[0]: row[1] for row in staged.groupBy(F.col(PARTITION).cast("string")).count().collect()}
    stray = sorted(set(per_day) - set(days))
    if stray:
        files.delete(staging)
        raise ValueError(f"rows for days outside the interval ({', '.join(stray[:5])}) in {root}")
    for name in days:
        target = f"{root}/{PARTITION}={name}"
        files.delete(target)
        if name in per_day:
            files.move(f"{staging}/{PARTITION}={name}", target)
    files.delete(staging)
    return sum(per_day.values())


def _days(first: pd.Timestamp, last: pd.Timestamp, timezone: str) -> list[str]:
    """The local dates from `first` to `last` (both local midnights), both included."""
    bounds = [pd.Timestamp(t).tz_convert(timezone) for t in (first, last)]
    for t in bounds:
        if t != t.normalize():
            raise ValueError(f"The Spark engine builds whole local days: {t} is not a midnight in {timezone}")
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(bounds[0], bounds[1], freq="D")]


def build_interval(
    spark: SparkSession,
    event_files: Sequence[Path],
    start: pd.Timestamp,
    end: pd.Timestamp,
    timezone: str,
    sources: Mapping[str, Path],
) -> tuple[dict[str, int], int]:
    """batch.build_interval on Spark: the snapshots stamped in [start, end] and the states after the
    events of [start, end) written into the day partitions of the offline sources (view name ->
    dataset folder), in place of those days. `start` and `end` are local midnights. Returns the rows
    written per view and the events read."""
    from pyspark.sql import functions as F

    start, end = pd.Timestamp(start), pd.Timestamp(end)
    register_functions(spark)
    read = bind_parquet(spark, event_files)
    grid = batch.snapshot_grid(start, end, timezone)
    stamp = F.col(EVENT_TIMESTAMP)
    rows: dict[str, int] = {}
    for view in (USER_VIEW, ITEM_VIEW, CATEGORY_VIEW):
        if view in sources:
            frame = dataframe(spark, batch.snapshot_rows(view, grid, start, end), f"{view}_rows")
            days = _days(start, end, timezone)
            rows[view] = replace_days(spark, frame, sources[view], days, local_day(stamp, timezone))
    if RECENT_VIEW in sources:
        bind_parquet(spark, event_files, start - batch.RECENT_LOOKBACK, end, name=_RECENT_EVENTS)
        expr = batch.recent_rows(start, end, definitions.events_table(_RECENT_EVENTS))
        frame = dataframe(spark, expr, f"{RECENT_VIEW}_rows")
        days = _days(start, end.tz_convert(timezone) - pd.DateOffset(days=1), timezone)
        event_time = stamp - F.expr(f"INTERVAL {int(RECENT_STATE_DELAY.total_seconds())} SECONDS")
        rows[RECENT_VIEW] = replace_days(
            spark, frame, sources[RECENT_VIEW], days, local_day(event_time, timezone)
        )
    return rows, read
