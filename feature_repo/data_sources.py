"""Offline sources: Parquet files written by the batch feature job (models/features.py).

Paths are absolute, under CTR_DATA_DIR (see models/settings.py), because Feast's offline stores
disagree on what a relative path is relative to. The job asks these sources where to write.
"""

from contract import EVENT_TIMESTAMP
from feast import FileSource

from models.settings import get_settings

OFFLINE_DIR = get_settings().data_dir / "offline"

user_stats_source = FileSource(
    name="user_stats_source",
    path=str(OFFLINE_DIR / "user_stats.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Daily snapshots of per-user behaviour counts.",
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=str(OFFLINE_DIR / "item_stats.parquet"),
    timestamp_field=EVENT_TIMESTAMP,
    description="Daily snapshots of per-item and per-category behaviour counts.",
)
