"""The README's FeatureService rows are the services as Feast loads them from feature_repo/."""

from __future__ import annotations

from pathlib import Path

from models.features.store import feature_service_rows

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_each_service_with_the_features_it_serves() -> None:
    rows = feature_service_rows(ROOT / "feature_repo")
    readme = (ROOT / "README.md").read_text().splitlines()
    documented = [line for line in readme if line.startswith("| **`ctr_ranker")]
    assert documented == rows, "README.md's FeatureService rows should read:\n" + "\n".join(rows)


def test_rows_name_the_features_a_service_leaves_out() -> None:
    (v2,) = [row for row in feature_service_rows(ROOT / "feature_repo") if "`ctr_ranker_v2`" in row]
    assert "| user_id, item_id |" in v2
    left_out = "all but `user_top_categories_7d`, `user_top_category_shares_7d`"
    assert f"`user_behavior_stats` (15 of 17, {left_out})" in v2
    assert "category_behavior_stats" not in v2
