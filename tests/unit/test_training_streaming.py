"""Training at any size: both kinds fit on Parquet files streamed block by block as they fit on a
frame; negatives downsampled on the training days give models whose probabilities, corrected inside
the saved model, match the unsampled positive rate and pass the gate's calibration checks; the
chunked training-set writer never samples a test day and labels every chunk as a whole run would."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, LABEL, USER_ID
from models import scoring
from models.evaluation.metrics import ctr_metrics
from models.evaluation.promotion import sanity_failures
from models.features.training_set import (
    Split,
    chunk_bounds,
    downsample_negatives,
    read_sampling,
    split_files,
    streamed_split,
    write_chunks,
)
from models.kinds import KINDS
from models.kinds.base import corrected_probability
from models.kinds.rows import FrameRows, ParquetRows
from models.kinds.wide_deep import WideDeepSpec, _shuffled_batches
from models.settings import get_settings
from models.training.fit import NEGATIVE_SAMPLE_RATE, lineage, train_kind

FEATURES = ["item_pv_7d", "user_cart_7d"]
T0 = pd.Timestamp("2017-11-25", tz="Asia/Shanghai")


def _rows(n: int, seed: int, day: int = 0) -> pd.DataFrame:
    """Rare purchase intent (about 3 %, as on Taobao) driven by popularity and loyal users."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1_000, 1_400, n)
    views = rng.poisson(np.exp(rng.normal(2, 1.5, n))).astype(np.float32)
    logit = -5.2 + 0.6 * np.log1p(views) + 1.5 * (users % 5 == 0)
    return pd.DataFrame(
        {
            USER_ID: users,
            ITEM_ID: rng.integers(1, 3_000, n),
            "category_id": rng.integers(1, 40, n),
            EVENT_TIMESTAMP: T0 + pd.Timedelta(days=day) + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
            "item_pv_7d": views,
            "user_cart_7d": rng.poisson(1, n).astype(np.float32),
            LABEL: (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
        }
    )


def _parquet(frame: pd.DataFrame, folder, files: int, row_group: int) -> ParquetRows:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        paths.append(folder / f"{i:03d}.parquet")
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[part], preserve_index=False), paths[-1], row_group_size=row_group
        )
    return ParquetRows(paths)


TRAIN, VALID, TEST = _rows(24_000, 0), _rows(8_000, 1, day=1), _rows(16_000, 2, day=2)


def test_parquet_rows_give_every_row_once_reading_only_the_columns_asked(tmp_path):
    rows = _parquet(TRAIN, tmp_path, files=3, row_group=3_000)
    assert len(rows) == len(TRAIN) and len(rows.block_rows()) == 9  # 3 files of 3 row groups
    block = rows.block(4, [LABEL, "item_pv_7d", "not_a_column"])
    assert list(block.columns) == [LABEL, "item_pv_7d"]
    np.testing.assert_array_equal(rows.column(USER_ID), TRAIN[USER_ID].to_numpy())


def test_shuffled_batches_cover_every_row_once_per_epoch_in_a_new_order_holding_two_buffers(tmp_path):
    rows = _parquet(TRAIN, tmp_path, files=4, row_group=1_500)
    spec = WideDeepSpec.for_columns(FEATURES, [USER_ID, ITEM_ID])
    batches = _shuffled_batches(rows, spec, batch_size=1_000, buffer_rows=4_500, seed=3, shuffle=True)
    assert len(batches) == 24
    orders = []
    for _ in range(2):
        seen = []
        for i in range(len(batches)):
            x, y = batches[i]
            assert len(batches._cache) <= 2  # never more than two shuffle buffers in memory
            seen.append(x[USER_ID].ravel() * 10_000 + x[ITEM_ID].ravel())
        orders.append(np.concatenate(seen))
        batches.on_epoch_end()
    everything = np.sort(TRAIN[USER_ID].to_numpy() * 10_000 + TRAIN[ITEM_ID].to_numpy())
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), everything)  # each row exactly once
    assert not np.array_equal(orders[0], orders[1])  # reshuffled between epochs
    assert abs(np.corrcoef(orders[0][:5_000], np.arange(5_000))[0, 1]) < 0.1  # mixed, not in storage order


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_streamed_from_parquet_learns_as_well_as_from_a_frame(kind, tmp_path, caplog):
    caplog.set_level("INFO", logger="models.training.progress")
    frame_split = Split(train=TRAIN, valid=VALID, test=TEST)
    streamed = Split(
        train=_parquet(TRAIN, tmp_path / "train", files=3, row_group=4_000),
        valid=_parquet(VALID, tmp_path / "valid", files=2, row_group=4_000),
        test=TEST,
    )
    y = TEST[LABEL].to_numpy()
    in_memory, _ = train_kind(kind, frame_split, FEATURES, device="cpu", seed=3)
    from_files, _ = train_kind(kind, streamed, FEATURES, device="cpu", seed=3)
    a, b = in_memory.predict(TEST), from_files.predict(TEST)
    assert from_files.meta["rows"] == {"train": 24_000, "valid": 8_000, "test": 16_000}
    assert ctr_metrics(y, b)["auc"] > 0.7
    assert abs(ctr_metrics(y, a)["auc"] - ctr_metrics(y, b)["auc"]) < 0.01
    assert np.corrcoef(a, b)[0, 1] > 0.97
    # Both fits show their progress: the first step with its validation loss, then where they ended.
    shown = [r.getMessage() for r in caplog.records if r.name == "models.training.progress"]
    metric = {"xgboost": "validation_0 logloss", "wide_deep": "val_loss"}[kind]
    firsts = [m for m in shown if ": 1/" in m]
    assert len(firsts) == 2 and all(metric in m for m in firsts), shown
    assert len(shown) >= 4 and "finished after" in shown[-1], shown


def test_downsampling_keeps_every_positive_and_the_rate_of_negatives_whatever_the_order():
    kept = downsample_negatives(TRAIN, 0.25, seed=7)
    negatives = int((TRAIN[LABEL] == 0).sum())
    assert int(kept[LABEL].sum()) == int(TRAIN[LABEL].sum())
    assert (kept[LABEL] == 0).sum() == pytest.approx(0.25 * negatives, rel=0.03)
    shuffled = downsample_negatives(TRAIN.sample(frac=1.0, random_state=1), 0.25, seed=7)
    assert shuffled.sort_index().equals(kept.sort_index())  # chosen by the row, not its position
    assert not downsample_negatives(TRAIN, 0.25, seed=8).index.equals(kept.index)
    assert downsample_negatives(TRAIN, 1.0, seed=7) is TRAIN


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_model_fitted_on_downsampled_negatives_scores_unsampled_rates_and_passes_the_gate(kind, tmp_path):
    rate = 0.2
    train, valid = _rows(80_000, 10), _rows(20_000, 11, day=1)
    sampled = Split(
        train=downsample_negatives(train, rate, seed=1),
        valid=downsample_negatives(valid, rate, seed=1),
        test=TEST,
    )
    y = TEST[LABEL].to_numpy()
    raw, _ = train_kind(kind, sampled, FEATURES, device="cpu", seed=3)
    corrected, _ = train_kind(kind, sampled, FEATURES, device="cpu", seed=3, negative_sample_rate=rate)
    uncorrected_mean = raw.predict(TEST).mean()
    assert uncorrected_mean > 3 * y.mean()  # without the correction the scores are far too high
    corrected.save(tmp_path / kind)
    loaded = scoring.load_saved(tmp_path / kind)  # the correction is inside the saved model
    p = loaded.predict(TEST)
    np.testing.assert_allclose(p, corrected_probability(raw.predict(TEST), rate), rtol=2e-3, atol=1e-6)
    metrics = ctr_metrics(y, p)
    assert metrics["mean_prediction"] == pytest.approx(metrics["positive_rate"], rel=0.15)
    settings = replace(get_settings(), scoring_budget_ms=1e6)
    assert sanity_failures(settings, loaded, TEST, metrics, p, popularity_auc=0.5) == []
    assert loaded.meta[NEGATIVE_SAMPLE_RATE] == rate and loaded.meta["params"][NEGATIVE_SAMPLE_RATE] == rate
    assert lineage(settings, loaded.meta, "full")[NEGATIVE_SAMPLE_RATE] == rate


def test_rate_one_changes_nothing():
    split = Split(train=TRAIN.head(8_000), valid=VALID, test=TEST)
    plain, _ = train_kind("xgboost", split, FEATURES, device="cpu", seed=3)
    same, _ = train_kind("xgboost", split, FEATURES, device="cpu", seed=3, negative_sample_rate=1.0)
    np.testing.assert_array_equal(plain.predict(TEST), same.predict(TEST))
    assert NEGATIVE_SAMPLE_RATE not in same.meta


def _chunks(frame: pd.DataFrame, bounds):
    for start, end in bounds:
        ts = frame[EVENT_TIMESTAMP]
        yield start, end, frame[(ts >= start) & (ts < end)].reset_index(drop=True)


def test_the_chunked_writer_samples_training_and_validation_days_only(tmp_path):
    days = [T0 + pd.Timedelta(days=d) for d in range(3)]
    frame = pd.concat([TRAIN, VALID, TEST], ignore_index=True)
    bounds = chunk_bounds(days, days[-1] + pd.Timedelta(days=1), (days[1], days[2]))
    folder = tmp_path / "training_set.parquet"
    cuts = {"valid_start": days[1], "test_start": days[2]}
    written = write_chunks(
        _chunks(frame, bounds), lambda rows: rows, folder, **cuts, negative_rate=0.2, seed=5, chunk_rows=7_000
    )
    assert [c.split for c in written] == ["train", "valid", "test"]
    split = streamed_split(folder, frames=("test",))
    pd.testing.assert_frame_equal(
        split.test.sort_values([EVENT_TIMESTAMP, USER_ID, ITEM_ID]).reset_index(drop=True),
        TEST.sort_values([EVENT_TIMESTAMP, USER_ID, ITEM_ID]).reset_index(drop=True),
        check_dtype=False,
    )  # every test row, unsampled
    assert len(split.train) < 0.3 * len(TRAIN) and split.train.column(LABEL).sum() == TRAIN[LABEL].sum()
    assert len(split_files(folder, "test")) == 3  # 16,000 test rows joined 7,000 at a time
    assert read_sampling(folder)["negative_sample_rate"] == 0.2
    assert len(pd.read_parquet(folder)) == sum(c.rows for c in written)  # one dataset to any reader
    # rate 1.0: every row of every day
    write_chunks(
        _chunks(frame, bounds), lambda rows: rows, folder, **cuts, negative_rate=1.0, seed=5, chunk_rows=10**6
    )
    assert len(pd.read_parquet(folder)) == len(frame) and read_sampling(folder)["negative_sample_rate"] == 1.0


def test_frame_rows_block_a_frame_without_copying_it_whole():
    rows = FrameRows(TRAIN, block_size=10_000)
    assert rows.block_rows() == [10_000, 10_000, 4_000]
    assert rows.to_frame().equals(TRAIN)
