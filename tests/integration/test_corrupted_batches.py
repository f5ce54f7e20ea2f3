"""Corrupted raw batches through the pipeline's own ingest and validation stages (real GX project):
every line of the file ends accepted or quarantined, and a batch broken past the tolerated share of
bad rows gets no accepted partition, so nothing downstream (features, online store, training) reads it.

The batches are one real day of the Taobao slice with one kind of damage each."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.integration.conftest import project_environment

pytestmark = pytest.mark.integration

DAY = "2017-12-01"  # a one-day window, local shop time (+08:00)
WINDOW = {
    "CTR_WINDOW_START": f"{DAY}T00:00:00+08:00",
    "CTR_VALID_START": f"{DAY}T08:00:00+08:00",
    "CTR_TEST_START": f"{DAY}T16:00:00+08:00",
    "CTR_WINDOW_END": "2017-12-02T00:00:00+08:00",
}
ROWS = 1000


@pytest.fixture(scope="module")
def day_lines() -> list[str]:
    """ROWS consecutive raw lines of the slice, all inside DAY."""
    from models.settings import get_settings

    raw = pd.read_csv(get_settings().raw_events, header=None, dtype=str)
    stamps = pd.to_datetime(raw[4].astype(int), unit="s", utc=True).dt.tz_convert("Asia/Shanghai")
    inside = raw[stamps.dt.strftime("%Y-%m-%d") == DAY].head(ROWS)
    assert len(inside) == ROWS
    return [",".join(fields) for fields in inside.itertuples(index=False)]


def _damage(lines: list[str], kind: str) -> list[str]:
    lines = list(lines)
    fields = [line.split(",") for line in lines]
    if kind == "nulls":  # 5 rows without a user id
        for i in range(0, 50, 10):
            fields[i][0] = ""
    elif kind == "duplicates":  # 5 rows delivered twice
        fields += [list(fields[i]) for i in range(5)]
    elif kind == "unknown behaviour":
        for i in range(5):
            fields[i][3] = "click"
    elif kind == "future timestamps":  # 2030, and before the Unix epoch
        for i in range(4):
            fields[i][4] = "1900000000"
        fields[4][4] = "-5"
    elif kind == "wrong types":
        fields[0][1], fields[1][2], fields[2][4], fields[3][0] = "abc", "3.5", "yesterday", "1e400"
    elif kind == "extra field":
        fields[0] = [*fields[0], "surplus"]
    elif kind == "broken: unknown behaviour in 30 % of rows":
        for i in range(300):
            fields[i][3] = "click"
    elif kind == "broken: missing column":
        fields = [f[:4] for f in fields]
    elif kind == "broken: empty file":
        fields = []
    return [",".join(f) for f in fields]


CASES = [
    # kind, quarantined rows, whether the batch passes
    ("none", 0, True),
    ("nulls", 5, True),
    ("duplicates", 5, True),
    ("unknown behaviour", 5, True),
    ("future timestamps", 5, True),
    ("wrong types", 4, True),
    ("extra field", 1, True),
    ("broken: unknown behaviour in 30 % of rows", 300, False),
    ("broken: missing column", ROWS, False),
    ("broken: empty file", 0, False),
]


def test_every_corrupted_line_is_accounted_for_and_a_broken_batch_is_held_back(
    day_lines, tmp_path_factory, use_environment, monkeypatch, reliability_report
):
    from models import pipeline
    from models.data.lake import ACCEPTED, partition_path
    from models.data.validation import DataValidationError
    from models.settings import get_settings

    totals = {"lines": 0, "accepted": 0, "quarantined": 0}
    for kind, expected_quarantined, passes in CASES:
        folder = tmp_path_factory.mktemp("corrupted")
        raw = folder / "events.csv"
        lines = _damage(day_lines, kind)
        raw.write_text("".join(f"{line}\n" for line in lines))
        use_environment(project_environment(folder, CTR_RAW_EVENTS=str(raw)))
        for key, value in WINDOW.items():
            monkeypatch.setenv(key, value)
        settings = get_settings()
        pipeline.ingest(settings)
        if passes:
            summary = pipeline.validate(settings)
        else:
            with pytest.raises(DataValidationError) as failed:
                pipeline.validate(settings)
            assert "1 of 1 days broken" in str(failed.value), kind
            summary = json.loads(next(settings.quarantine_dir.glob("date=*/report.json")).read_text())
        day = pd.Timestamp(WINDOW["CTR_WINDOW_START"])
        assert partition_path(settings, ACCEPTED, day).exists() == passes, kind
        quarantined = pd.read_parquet(next(settings.quarantine_dir.glob("date=*/rows.parquet")))
        assert summary["input_rows"] == len(lines), kind
        assert summary["accepted_rows"] + summary["quarantined_rows"] == len(lines), kind
        assert summary["quarantined_rows"] == expected_quarantined == len(quarantined), kind
        # Every quarantined row names its source line, so the raw line can be found again.
        assert quarantined["source_row"].between(1, len(lines)).all(), kind
        if kind == "duplicates":
            assert sorted(quarantined["repeat_of"].tolist()) == [1, 2, 3, 4, 5]
        totals["lines"] += len(lines)
        totals["accepted"] += summary["accepted_rows"] if passes else 0
        totals["quarantined"] += summary["quarantined_rows"]

    held_back = sum(len(_damage(day_lines, k)) - q for k, q, ok in CASES if not ok)
    reliability_report(
        scenario="corrupted raw batches through ingest + GX validation",
        load=f"{len(CASES)} batches of one real day ({totals['lines']:,} lines)",
        faults="none",
        bad_inputs=", ".join(kind for kind, _, _ in CASES[1:]),
        requests_lost="-",
        rows_lost=totals["lines"] - totals["accepted"] - totals["quarantined"] - held_back,
        measured=f"{totals['accepted']:,} accepted + {totals['quarantined']:,} quarantined + {held_back:,} "
        "in broken batches held back (no accepted partition) = every line",
    )
