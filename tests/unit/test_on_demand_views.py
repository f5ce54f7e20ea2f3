"""The request-time on-demand view on events built so each feature's value is known by hand."""

import copy
import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
T = 1_512_000_000  # the request time; 2017-11-30 00:00 UTC = 08:00 in the shop


@pytest.fixture(scope="module")
def realtime_context():
    """The view's own function, imported as Feast imports the repo (its files as top-level modules)."""
    sys.path.insert(0, str(REPO))
    try:
        view = importlib.import_module("on_demand_views").realtime_context
    finally:
        sys.path.remove(str(REPO))
    return view.feature_transformation.udf


def _user_lists():
    # Oldest first: a view 4,000 s ago, a cart 200 s ago, a view 100 s ago, and a buy 50 s after the
    # request (not known at it).
    return {
        "recent_timestamps": [T - 4000, T - 200, T - 100, T + 50],
        "recent_items": [1, 2, 3, 4],
        "recent_categories": [10, 20, 10, 30],
        "recent_behaviors": [0, 1, 0, 3],  # codes of ('pv', 'cart', 'fav', 'buy')
    }


def _request(candidates, categories, lists, copies=False):
    """One user's rows as the ranker passes them (the same list objects on every row), or as
    independent copies per row (as a training set's rows come)."""
    n = len(candidates)
    inputs = {k: [copy.copy(v) if copies else v for _ in range(n)] for k, v in lists.items()}
    return {**inputs, "item_id": candidates, "category_id": categories, "request_ts": [T] * n}


def test_features_of_one_user_and_three_candidates(realtime_context):
    out = realtime_context(_request([2, 4, 9], [10, 30, None], _user_lists()))
    assert out["request_hour"] == [8.0] * 3
    assert out["user_seconds_since_last_event"] == [100.0] * 3
    assert out["user_events_5m"] == [2.0] * 3  # 200 s and 100 s ago
    assert out["user_events_1h"] == [2.0] * 3  # 4,000 s ago is outside the hour
    assert out["user_intents_1h"] == [1.0] * 3  # the cart
    assert out["item_seen_recently"] == [1.0, 0.0, 0.0]  # item 4 is only seen after the request
    assert out["category_seen_recently"] == [1.0, 0.0, 0.0]


def test_shared_and_copied_lists_give_the_same_values(realtime_context):
    """Rows that share one user's lists are worked out once per user: the values must be those of
    rows computed one by one, also where the user or the request time changes between rows."""
    other = {
        "recent_timestamps": [T - 10],
        "recent_items": [9],
        "recent_categories": [30],
        "recent_behaviors": [3],
    }
    lists = _user_lists()
    a, b = _request([2, 4, 9], [10, 30, None], lists), _request([9, 2], [30, 10], other)
    later = _request([4, 3], [30, 10], lists)
    later["request_ts"] = [T + 300] * 2  # the same user's lists, five minutes on
    empty = _request([2], [10], dict.fromkeys(lists))  # a user with no recent events
    rows = [a, later, b, empty]
    shared = {k: sum((r[k] for r in rows), []) for k in a}
    copied = {k: sum((copy.deepcopy(r[k]) for r in rows), []) for k in a}
    assert realtime_context(shared) == realtime_context(copied)
    out = realtime_context(shared)
    assert out["item_seen_recently"] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert out["user_events_1h"][3:5] == [3.0, 3.0]  # the buy is known now; the first view is 4,300 s old
    assert out["user_seconds_since_last_event"][5:7] == [10.0, 10.0]
    assert out["user_seconds_since_last_event"][7] == 7 * 86400.0  # no events: the cap


def test_the_view_is_stored_by_value_and_runs_where_the_repo_cannot_be_imported(realtime_context, tmp_path):
    """The registry keeps the function as Feast serialises it; a reader (the ranker, a training
    run) loads it without the repo's folder on its path, so the contract's shop_hour travels in it."""
    import json
    import subprocess

    import dill

    body = tmp_path / "udf.dill"
    body.write_bytes(dill.dumps(realtime_context, recurse=True))  # as Feast stores it
    inputs = _request([2, 4, 9], [10, 30, None], _user_lists())
    script = (
        "import dill, json, sys\n"
        "udf = dill.loads(open(sys.argv[1], 'rb').read())\n"
        "assert not {'contract', 'on_demand_views', 'feature_repo'} & set(sys.modules), sorted(sys.modules)\n"
        "print(json.dumps(udf(json.loads(sys.argv[2]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(body), json.dumps(inputs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == realtime_context(inputs)


# --- The columnar functions against the row-by-row definitions they replace ---------------------


def _reference_realtime_context(inputs: dict) -> dict:
    """The view's values worked out one row at a time, in plain Python, from their definitions."""
    intents, cap = (1, 2, 3), 7 * 86400.0
    out: dict[str, list[float]] = {
        n: []
        for n in (
            "request_hour",
            "user_seconds_since_last_event",
            "user_events_5m",
            "user_events_1h",
            "user_intents_1h",
            "item_seen_recently",
            "category_seen_recently",
        )
    }
    for i, t in enumerate(inputs["request_ts"]):
        stamps = inputs["recent_timestamps"][i]
        known = [j for j, s in enumerate(stamps if stamps is not None else []) if s <= t]
        ages = [t - stamps[j] for j in known]
        candidate, category = inputs["item_id"][i], inputs["category_id"][i]
        values = [
            float((t + 8 * 3600) // 3600 % 24),
            float(min(min(ages), cap)) if ages else cap,
            float(sum(a < 300 for a in ages)),
            float(sum(a < 3600 for a in ages)),
            float(
                sum(
                    a < 3600 and inputs["recent_behaviors"][i][j] in intents
                    for j, a in zip(known, ages, strict=True)
                )
            ),
            float(candidate is not None and candidate in {inputs["recent_items"][i][j] for j in known}),
            float(category is not None and category in {inputs["recent_categories"][i][j] for j in known}),
        ]
        for name, value in zip(out, values, strict=True):
            out[name].append(value)
    return out


def _reference_affinity(inputs: dict) -> dict:
    share_out, rank_out = [], []
    for top, share, category in zip(
        inputs["user_top_categories_7d"],
        inputs["user_top_category_shares_7d"],
        inputs["category_id"],
        strict=True,
    ):
        top = list(top) if top is not None else []
        if category is not None and category in top:
            share_out.append(float(share[top.index(category)]))
            rank_out.append(float(top.index(category) + 1))
        else:
            share_out.append(0.0)
            rank_out.append(6.0)
    return {"user_category_share_7d": share_out, "user_category_rank_7d": rank_out}


def _random_rows(n: int, seed: int) -> dict:
    """Rows of every shape the views meet: users without events or top categories, events after the
    request, unknown candidates and categories, repeated categories, lists shared between rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {
        k: []
        for k in (
            "recent_timestamps",
            "recent_items",
            "recent_categories",
            "recent_behaviors",
            "user_top_categories_7d",
            "user_top_category_shares_7d",
            "item_id",
            "category_id",
            "request_ts",
        )
    }
    shared = None
    for _ in range(n):
        t = T + int(rng.integers(0, 86400))
        if shared is not None and rng.random() < 0.3:
            lists = shared  # the same objects as the row before, as a request passes them
        elif rng.random() < 0.1:
            lists = dict.fromkeys(
                ("recent_timestamps", "recent_items", "recent_categories", "recent_behaviors")
            )
        else:
            k = int(rng.integers(0, 21))
            lists = {
                "recent_timestamps": sorted(int(s) for s in t - rng.integers(-100, 8 * 86400, k)),
                "recent_items": [int(x) for x in rng.integers(0, 30, k)],
                "recent_categories": [int(x) for x in rng.integers(0, 8, k)],
                "recent_behaviors": [int(x) for x in rng.choice(4, k, p=[0.7, 0.1, 0.1, 0.1])],
            }
        shared = lists
        for key, value in lists.items():
            rows[key].append(value)
        if rng.random() < 0.1:
            top, shares = None, None
        else:
            top = [int(x) for x in rng.integers(0, 8, int(rng.integers(0, 6)))]  # may repeat
            shares = [float(np.float32(x)) for x in rng.random(len(top))]
        rows["user_top_categories_7d"].append(top)
        rows["user_top_category_shares_7d"].append(shares)
        rows["item_id"].append(None if rng.random() < 0.05 else int(rng.integers(0, 30)))
        rows["category_id"].append(None if rng.random() < 0.05 else int(rng.integers(0, 8)))
        rows["request_ts"].append(t)
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("as_arrow", [False, True])
def test_the_columnar_views_give_the_row_by_row_values(realtime_context, seed, as_arrow):
    """Every value equals the row-by-row definition, from Python lists (a request, Feast's paths) or
    from Arrow arrays (a training-set build), on 3,000 rows of every shape."""
    import pyarrow as pa

    sys.path.insert(0, str(REPO))
    try:
        affinity = importlib.import_module("on_demand_views").user_item_affinity.feature_transformation.udf
    finally:
        sys.path.remove(str(REPO))
    rows = _random_rows(3000, seed)
    inputs = {k: pa.array(v) for k, v in rows.items()} if as_arrow else rows
    assert realtime_context(inputs) == _reference_realtime_context(rows)
    assert affinity(inputs) == _reference_affinity(rows)
