"""SYNTHETIC Taobao-format events (models/data/synth.py): sizes, determinism, the project's own
ingestion and validation on them, statistics against the real slices, the planted signal, labels."""

from __future__ import annotations

import io
import json
import math
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.data import synth
from models.data.events import load_events, raw_event_files
from models.data.ingestion import collect_raw_events
from models.settings import get_settings

SMALL, LARGE = 20_000, 400_000
REAL = synth.REAL_DIR
needs_real = pytest.mark.skipif(
    not (REAL / synth.REAL_SLICE).is_file() or not (REAL / synth.REAL_STREAM).is_file(),
    reason="the real Taobao slices are not in ../shared/data",
)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    synth.write_synthetic(out, SMALL, seed=3, progress=None)
    return out


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("large")
    synth.write_synthetic(out, LARGE, seed=11, progress=None)
    return out


def _rows(folder: Path) -> pd.DataFrame:
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    files = sorted(folder.glob("date=*/events.csv"))
    return pd.concat([pd.read_csv(f, header=None, names=names).assign(file=f.parent.name) for f in files])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("text", "events"),
    [("100M", 100_000_000), ("10m", 10_000_000), ("1e6", 1_000_000), ("2.5k", 2_500), ("84287", 84_287)],
)
def test_sizes_are_read_as_people_write_them(text, events):
    assert synth.parse_size(text) == events


@pytest.mark.parametrize("text", ["1.5", "0", "ten", "-3", "5x"])
def test_a_size_that_is_not_a_whole_number_of_events_is_refused(text):
    with pytest.raises(ValueError, match="size"):
        synth.parse_size(text)


def test_entities_scale_in_taobao_proportions():
    full = synth.entity_counts(synth.TAOBAO_EVENTS)
    assert (full.shoppers, full.items, full.categories) == (987_994, 4_162_024, 9_439)
    million = synth.entity_counts(1_000_000)
    assert (million.shoppers, million.items) == (9_865, 41_558)
    assert 1_000 < million.categories < 9_439  # fewer categories below full size
    chosen = synth.entity_counts(50_000, shoppers=100, items=700)
    assert (chosen.shoppers, chosen.items) == (100, 700)
    with pytest.raises(ValueError, match="at least one each"):
        synth.entity_counts(10, shoppers=11)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_ones(small, tmp_path):
    synth.write_synthetic(tmp_path / "again", SMALL, seed=3, progress=None)
    synth.write_synthetic(tmp_path / "other", SMALL, seed=4, progress=None)
    assert _files(tmp_path / "again") == _files(small)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(small).keys()
    assert other["date=2017-11-25/events.csv"] != _files(small)["date=2017-11-25/events.csv"]


def test_rows_and_entities_are_as_asked_each_row_in_its_local_day(small):
    rows = _rows(small)
    sizes = synth.entity_counts(SMALL)
    marker = json.loads((small / synth.MARKER).read_text())
    assert len(rows) == SMALL == sum(marker["days"].values())
    assert rows["user_id"].nunique() == sizes.shoppers  # every shopper has at least one event
    assert rows["item_id"].between(1, sizes.items).all()
    assert rows["category_id"].between(1, sizes.categories).all()
    assert set(rows["behavior_type"]) == {"pv", "cart", "fav", "buy"}
    local = pd.to_datetime(rows["timestamp"], unit="s", utc=True).dt.tz_convert("Asia/Shanghai")
    assert (("date=" + local.dt.strftime("%Y-%m-%d")) == rows["file"]).all()
    assert sorted(marker["days"]) == synth.day_names()
    # an item is in one category, as in Taobao
    assert rows.groupby("item_id")["category_id"].nunique().max() == 1


def test_the_project_ingests_and_validates_every_row(small, tmp_path, monkeypatch):
    from models.data.validation import validate_events

    monkeypatch.setenv("CTR_RAW_EVENTS", str(small))
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    settings = get_settings()
    raw = collect_raw_events(settings, settings.window_start, settings.window_end)
    assert len(raw.events) == SMALL
    outcome = validate_events(raw.events, settings.window_start, settings.window_end, 0.0)
    assert outcome.success
    assert (len(outcome.accepted), len(outcome.quarantined)) == (SMALL, 0)


def test_a_run_for_one_day_reads_only_that_days_partition_and_judges_all_its_rows(
    small, tmp_path, monkeypatch
):
    from models.data.validation import validate_events

    copy = tmp_path / "raw"
    shutil.copytree(small, copy)
    (copy / "date=2017-11-30/events.csv").write_text("not,a,valid,row\n")  # another day's file
    late = int(pd.Timestamp("2017-11-29T12:00:00+08:00").timestamp())
    with (copy / "date=2017-11-27/events.csv").open("a") as f:
        f.write(f"1,1,1,pv,{late}\n")  # delivered with 11-27, timed on 11-29
    monkeypatch.setenv("CTR_RAW_EVENTS", str(copy))
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path / "data"))
    settings = get_settings()
    days = json.loads((small / synth.MARKER).read_text())["days"]
    day = pd.Timestamp("2017-11-27", tz="Asia/Shanghai")
    raw = collect_raw_events(settings, day, day + pd.Timedelta(days=1))
    assert len(raw.events) == days["2017-11-27"] + 1
    assert raw.events["user_id"].notna().all()  # the broken file of 11-30 was not read
    assert [f.parent.name for f in raw_event_files(copy, [day])] == ["date=2017-11-27"]
    outcome = validate_events(raw.events, day, day + pd.Timedelta(days=1), 0.01)
    assert len(outcome.quarantined) == 1
    assert outcome.quarantined["event_timestamp"].iloc[0] == pd.Timestamp(late, unit="s", tz="UTC")
    on_29 = pd.Timestamp("2017-11-29", tz="Asia/Shanghai")
    assert len(collect_raw_events(settings, on_29, on_29 + pd.Timedelta(days=1)).events) == days["2017-11-29"]
    whole = collect_raw_events(settings, settings.window_start, settings.window_end)
    assert len(whole.events) == SMALL - days["2017-11-30"] + 1 + 1  # each line read once
    assert whole.events["user_id"].isna().sum() == 1  # the broken line, read with the whole window


def test_a_partition_folder_reads_like_the_same_rows_in_one_csv(small, tmp_path):
    day = small / "date=2017-11-28" / "events.csv"
    single = load_events(day, user_id_key="")
    partition = load_events(small, user_id_key="", days=[pd.Timestamp("2017-11-28", tz="Asia/Shanghai")])
    pd.testing.assert_frame_equal(single, partition)


def test_a_folder_without_day_partitions_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no day partitions"):
        raw_event_files(tmp_path)


def test_everything_written_is_labelled_synthetic(small, tmp_path):
    marker = json.loads((small / synth.MARKER).read_text())
    assert marker["SYNTHETIC"] is True
    assert (marker["seed"], marker["events"], marker["generator_version"]) == (
        3,
        SMALL,
        synth.GENERATOR_VERSION,
    )
    assert marker["parameters_hash"] == synth.parameters_hash(synth.load_parameters())
    assert synth.is_synthetic(small)
    assert synth.is_synthetic(small / "date=2017-11-25" / "events.csv")
    assert not synth.is_synthetic(tmp_path)
    log = io.StringIO()
    synth.write_synthetic(tmp_path / "logged", 1_000, seed=1, progress=log)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("SYNTHETIC ") for line in lines)
    assert "events/s" in lines[1]


@needs_real
def test_the_real_slices_are_not_synthetic():
    assert not synth.is_synthetic(REAL / synth.REAL_SLICE)


@needs_real
def test_statistics_are_within_their_stated_tolerances_of_the_real_ones(large):
    rows = synth.compare(large)
    held = [r for r in rows if r["ok"] is not None]
    assert len(held) >= 20
    off = [
        f"{r['statistic']}: real {r['real']:.4g}, synthetic {r['synthetic']:.4g}" for r in held if not r["ok"]
    ]
    assert off == []
    report = json.loads((large / synth.STATISTICS_FILE).read_text())
    assert report["SYNTHETIC"] is True and report["dataset"]["seed"] == 11
    assert {r["statistic"] for r in report["rows"]} == {s.label for s in synth.STATISTICS}


@needs_real
def test_the_comparison_sees_a_dataset_that_does_not_fit(small, tmp_path):
    # the same rows with every behaviour a view: the behaviour rows must fail
    broken = tmp_path / "broken"
    shutil.copytree(small, broken)
    for f in broken.glob("date=*/events.csv"):
        f.write_text(
            f.read_text().replace(",cart,", ",pv,").replace(",buy,", ",pv,").replace(",fav,", ",pv,")
        )
    failed = {r["statistic"] for r in synth.compare(broken) if r["ok"] is False}
    assert {"share of pv", "share of cart", "share of fav", "share of buy"} <= failed


def _category_share_auc(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    views = synth._labelled_views(synth._sorted(_rows(folder).drop(columns="file")))
    return views["label"].to_numpy(), views["category_share"].to_numpy()


def test_the_planted_signal_predicts_conversion_and_is_what_makes_it(tmp_path):
    synth.write_synthetic(tmp_path / "planted", 150_000, seed=5, progress=None)
    label, share = _category_share_auc(tmp_path / "planted")
    planted = synth._auc(label, share)
    shuffled = synth._auc(label, np.random.default_rng(0).permutation(share))
    assert planted > 0.6
    assert abs(shuffled - 0.5) < 0.03
    # without the planted term, the category's share in the shopper's past predicts much less
    params = {**synth.load_parameters(), "planted_signal": 0.0}
    synth.write_synthetic(tmp_path / "flat", 150_000, seed=5, params=params, progress=None)
    assert planted - synth._auc(*_category_share_auc(tmp_path / "flat")) > 0.05


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, path


@needs_real
def test_refitting_on_the_real_slices_gives_the_committed_parameters(tmp_path):
    refit = tmp_path / "params.json"
    synth.write_parameters(REAL, refit)  # what `ctr synth --fit` does
    _close(synth.load_parameters(refit), synth.load_parameters())


@needs_real
def test_the_command_writes_and_prints_the_side_by_side_table(tmp_path):
    from models.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["synth", "--events", "20k", "--seed", "2", "--out", str(tmp_path / "d")]) == 0
    assert "SYNTHETIC" in out.getvalue() and "share of pv" in out.getvalue()
    assert "SYNTHETIC wrote 20,000 events" in err.getvalue()
    assert (tmp_path / "d" / synth.STATISTICS_FILE).is_file()
    with redirect_stdout(io.StringIO()), redirect_stderr(err := io.StringIO()):
        assert main(["synth", "--events", "1.5", "--out", str(tmp_path / "e")]) == 2
        assert main(["synth", "--compare", str(tmp_path)]) == 2
    assert "whole number" in err.getvalue() and "SYNTHETIC.json" in err.getvalue()


def test_a_model_trained_on_synthetic_data_says_so_in_its_lineage(small, tmp_path, monkeypatch):
    from models.training.fit import lineage

    meta = {"rows": {"train": 1}, "device": "cpu"}
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CTR_RAW_EVENTS", str(small))
    assert lineage(get_settings(), meta, "full")["synthetic"] is True
    monkeypatch.delenv("CTR_RAW_EVENTS")
    assert lineage(get_settings(), meta, "full")["synthetic"] is False  # the real slice
