"""The served-ranking log: every row written once, whole files only, joinable to later behaviour."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from models.monitoring.serving_log import ServingLog, join_outcomes, read_serving_log, rows_of

AT = datetime(2017, 12, 3, 4, 0, tzinfo=UTC)


def _response(request_id: str, user: int, items: list[int], at: datetime = AT) -> dict:
    features = pd.DataFrame({"user_id": user, "item_id": items, "item_pv_7d": [3.0] * len(items)})
    return dict(
        request_id=request_id,
        endpoint="rank",
        user_id=user,
        item_ids=items,
        scores=[0.3, 0.2, 0.1][: len(items)],
        variant="champion",
        model_name="ctr-xgboost",
        model_version="4",
        feature_service="ctr_ranker_realtime_v1",
        fallback=False,
        unknown=[False] * len(items),
        features=features,
        served_at=at,
    )


def test_rows_are_flushed_in_whole_files_and_read_back(tmp_path):
    log = ServingLog(tmp_path, flush_rows=4, flush_s=60)
    log.append(**_response("a", 1, [10, 11, 12]))
    log.append(**_response("b", 2, [10, 13]))  # 5 rows: past flush_rows, the thread writes a file
    log.append(**_response("c", 3, [14]))
    log.close()
    assert not list(tmp_path.rglob("*.tmp"))
    served = read_serving_log(tmp_path)
    assert len(served) == 6 and served["request_id"].value_counts().to_dict() == {"a": 3, "b": 2, "c": 1}
    assert served.loc[served["request_id"] == "a", "position"].tolist() == [1, 2, 3]
    assert served["f_item_pv_7d"].eq(3.0).all() and "f_user_id" not in served
    assert {p.parent.name for p in tmp_path.rglob("*.parquet")} == {"date=2017-12-03"}


def test_outcomes_count_only_behaviour_after_serving_and_inside_the_horizon():
    responses = [_response("a", 1, [10, 11, 12]), _response("b", 2, [10])]
    served = rows_of(responses)
    served["served_at"] = pd.to_datetime(served["served_at"], utc=True)
    ts = pd.Timestamp(AT)
    events = pd.DataFrame(
        [
            (1, 10, "pv", ts + timedelta(minutes=1)),  # clicked
            (1, 10, "cart", ts + timedelta(minutes=2)),  # and converted
            (1, 11, "pv", ts - timedelta(minutes=1)),  # before serving: not an outcome
            (1, 12, "buy", ts + timedelta(hours=7)),  # after the 6-hour horizon
            (2, 11, "pv", ts + timedelta(minutes=1)),  # an item user 2 was not shown
        ],
        columns=["user_id", "item_id", "behavior", "event_timestamp"],
    )
    out = join_outcomes(served, events).set_index(["request_id", "item_id"])
    assert out.loc[("a", 10), ["clicked", "converted"]].tolist() == [True, True]
    assert out.loc[("a", 11), ["clicked", "converted"]].tolist() == [False, False]
    assert out.loc[("a", 12), ["clicked", "converted"]].tolist() == [False, False]
    assert out.loc[("b", 10), ["clicked", "converted"]].tolist() == [False, False]


def test_features_are_logged_in_served_order():
    features = pd.DataFrame({"user_id": 1, "item_id": [10, 11, 12], "item_pv_7d": [1.0, 2.0, 3.0]})
    fields = {**_response("a", 1, [12, 10, 11]), "features": features, "order": [2, 0, 1]}
    rows = rows_of([fields])
    assert rows["item_id"].tolist() == [12, 10, 11]
    assert rows["f_item_pv_7d"].tolist() == [3.0, 1.0, 2.0]


def test_a_batch_mixing_fallbacks_top_k_and_missing_features_logs_each_row_its_own_values():
    full = pd.DataFrame(
        {"user_id": 1, "item_id": [10, 11, 12], "item_pv_7d": [1.0, 2.0, 3.0], "user_pv_7d": 5.0}
    )
    unknown_user = full.assign(user_pv_7d=None)  # Feast has nothing for the user: None, not NaN
    top_two = {**_response("a", 1, [12, 11]), "features": full, "order": [2, 1], "scores": [0.3, 0.2]}
    fallback = {**_response("b", 2, [10, 11]), "features": None, "fallback": True}
    cold = {**_response("c", 3, [10, 11, 12]), "features": unknown_user}
    rows = rows_of([top_two, fallback, cold]).set_index("request_id")
    assert rows.loc["a", "f_item_pv_7d"].tolist() == [3.0, 2.0]
    assert rows.loc["a", "f_user_pv_7d"].tolist() == [5.0, 5.0]
    assert rows.loc["b", ["f_item_pv_7d", "f_user_pv_7d"]].isna().all().all()
    assert rows.loc["c", "f_item_pv_7d"].tolist() == [1.0, 2.0, 3.0]
    assert rows.loc["c", "f_user_pv_7d"].isna().all()
