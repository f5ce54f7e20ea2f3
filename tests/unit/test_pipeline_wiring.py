"""The data stages as the DAG and `ctr run` call them, on a two-day batch built for the case (a real
GX project on disk, no services): what each stage writes and the typed summary it returns, whose
counts must reconcile from raw lines to accepted and quarantined rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from models import pipeline
from models.data import lake
from models.data.event_log import EventLog, canonical
from models.data.events import event_ids
from models.settings import get_settings
from models.stage_results import Ingested, Validated

DAY1 = datetime(2017, 12, 1, 12, tzinfo=UTC)  # 20:00 in the shop (+08:00), 2017-12-01
DAY2 = datetime(2017, 12, 2, 2, tzinfo=UTC)  # 10:00 in the shop, 2017-12-02


@pytest.fixture
def settings(tmp_path, monkeypatch):
    t1, t2 = int(DAY1.timestamp()), int(DAY2.timestamp())
    lines = [f"{u},{100 + u},7,pv,{t1 + u}" for u in range(1, 41)]
    lines += [f"{u},{200 + u},8,buy,{t2 + u}" for u in range(1, 31)]
    lines += ["41,300,9,pv,1000000000"]  # before the dataset's period: quarantined
    lines += ["42,301,9,teleport," + str(t2)]  # an unknown behaviour: quarantined
    raw = tmp_path / "raw.csv"
    raw.write_text("\n".join(lines) + "\n")
    for key, value in {
        "CTR_DATA_DIR": str(tmp_path / "var"),
        "CTR_RAW_EVENTS": str(raw),
        "CTR_WINDOW_START": "2017-12-01T00:00:00+08:00",
        "CTR_VALID_START": "2017-12-02T00:00:00+08:00",
        "CTR_TEST_START": "2017-12-02T12:00:00+08:00",
        "CTR_WINDOW_END": "2017-12-03T00:00:00+08:00",
        "CTR_MAX_BAD_ROW_FRACTION": "0.1",
    }.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    # Two live events: one new, one the CSV also has (kept once).
    logged = canonical(
        [
            {
                "user_id": 50,
                "item_id": 500,
                "category_id": 5,
                "behavior": "cart",
                "event_timestamp": t2 + 99,
            },
            {
                "user_id": 1,
                "item_id": 201,
                "category_id": 8,
                "behavior": "buy",
                "event_timestamp": t2 + 1,
            },
        ]
    )
    logged = logged.assign(event_id=event_ids(logged), ingested_at=pd.Timestamp(DAY2))
    EventLog(settings.paths.event_log).append(logged)
    return settings


def test_ingest_then_validate_reconcile_every_line_and_return_typed_summaries(settings):
    assert pipeline.training_readiness(settings).missing_days == ["2017-12-01", "2017-12-02"]

    ingested = pipeline.ingest(settings)
    assert isinstance(ingested, Ingested)
    assert ingested.days == {"2017-12-01": 41, "2017-12-02": 32}  # the bad-time row: first day
    assert (ingested.rows, ingested.event_log_rows, ingested.duplicates_dropped) == (73, 2, 1)
    assert ingested["rows"] == 73  # read by key, as the JSON summary was
    assert json.loads(json.dumps(pipeline.as_json(ingested)))["days"]["2017-12-02"] == 32

    validated = pipeline.validate(settings)
    assert isinstance(validated, Validated) and validated.success
    assert (validated.input_rows, validated.accepted_rows, validated.quarantined_rows) == (73, 71, 2)
    assert validated.days["2017-12-01"]["quarantined_rows"] == 1
    assert validated.days["2017-12-02"]["quarantined_rows"] == 1
    assert validated.data_docs.endswith("gx/uncommitted/data_docs/local_site/index.html")

    accepted = lake.read_events(settings, lake.ACCEPTED)
    assert len(accepted) == 71 and set(accepted["behavior"]) == {"pv", "buy", "cart"}
    totals = pipeline.validation_totals(settings)
    assert (totals.input_rows, totals.accepted_rows, totals.quarantined_rows, totals.days) == (73, 71, 2, 2)
    assert totals.failed_days == []
    assert pipeline.training_readiness(settings).ready


def test_a_day_broken_past_the_tolerated_share_gets_no_accepted_partition(settings, monkeypatch):
    monkeypatch.setenv("CTR_MAX_BAD_ROW_FRACTION", "0.01")  # 1 bad row of 41 is too many now
    settings = get_settings()
    pipeline.ingest(settings)
    with pytest.raises(pipeline.DataValidationError, match=r"2 of 2 days broken"):
        pipeline.validate(settings)
    assert lake.partitions(settings, lake.ACCEPTED) == []
    assert pipeline.validation_totals(settings).failed_days == ["2017-12-01", "2017-12-02"]
    with pytest.raises(FileNotFoundError, match="2017-12-01, 2017-12-02"):
        pipeline.build_features(settings)


def test_every_stage_result_is_plain_json():
    results = [
        pipeline.Readiness(False, ["2017-12-01"]),
        pipeline.Trained("xgboost", {"train": 1, "valid": 1, "test": 1}, "cpu", 0.5, {"best_iteration": 3}),
    ]
    assert [pipeline.as_json(r) for r in results] == [
        {"ready": False, "missing_days": ["2017-12-01"]},
        {
            "best_iteration": 3,
            "rows": {"train": 1, "valid": 1, "test": 1},
            "device": "cpu",
            "train_seconds": 0.5,
        },
    ]
    assert results[1]["best_iteration"] == 3 and results[1]["device"] == "cpu"
