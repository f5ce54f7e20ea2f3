"""Sources: Parquet files written by the batch feature job (models/features/batch.py), and the push
source the ingest service (services/ingest.py) writes live updates through.

Paths are absolute, under the data dir (CTR_DATA_DIR, read by the contract's `data_dir`, not by the
project's settings), because Feast's offline stores disagree on what a relative path is relative
to. The job asks these sources where to write. With FEAST_FS_YAML_FILE_PATH naming the
feature_store.yaml the project wrote for a data dir, CTR_DATA_DIR must name that data dir.
"""

from contract import (
    EVENT_TIMESTAMP,
    OFFLINE_FOLDER,
    RECENT_PUSH_SOURCE,
    REQUEST_TS,
    check_feast_yaml_variable,
    data_dir,
)
from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Int64

check_feast_yaml_variable()  # `feast apply` must not point one data dir's registry at another's files
OFFLINE_DIR = data_dir() / OFFLINE_FOLDER

user_stats_source = FileSource(
    name="user_stats_source",
    path=str(OFFLINE_DIR / "user_stats.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Daily snapshots of per-user behaviour counts and top categories.",
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=str(OFFLINE_DIR / "item_stats.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Daily snapshots of per-item counts, with the item's category and its numbers.",
)

category_stats_source = FileSource(
    name="category_stats_source",
    path=str(OFFLINE_DIR / "category_stats.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Daily snapshots of per-category behaviour counts.",
)

user_activity_source = FileSource(
    name="user_activity_source",
    path=str(OFFLINE_DIR / "user_activity.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Each user's last events after every event second, rebuilt by the batch job.",
)

user_activity_push = PushSource(
    name=RECENT_PUSH_SOURCE,
    batch_source=user_activity_source,
    description="Live updates of each user's last events, pushed by the ingest service.",
)

request_context = RequestSource(
    name="request_context",
    schema=[Field(name=REQUEST_TS, dtype=Int64, description="The request's time, Unix seconds.")],
)
