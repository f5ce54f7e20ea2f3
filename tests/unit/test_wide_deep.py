"""Wide&Deep on data built so the right answer is known: it must learn from ids, crosses and
counts, keep its preprocessing inside the saved file, and survive what serving throws at it."""

import numpy as np
import pandas as pd
import pytest

from models.kinds.wide_deep import (
    WideDeepSpec,
    batch_size_for,
    load_wide_deep,
    model_inputs,
    predict_wide_deep,
    spec_of,
    train_wide_deep,
)

NUMERIC = ["item_pv_7d", "user_cart_7d"]
SPEC = WideDeepSpec.for_columns(
    NUMERIC, ["user_id", "item_id"], [("user_id", "item_id"), ("user_id", "category_id")]
)


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Clicks driven by popularity (a heavy-tailed count) and by a set of 'loyal' user ids."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1_000, 1_400, n) * 7919  # large, sparse ids as in Taobao
    views = rng.poisson(np.exp(rng.normal(2, 1.5, n))).astype(np.float32)
    loyal = (users // 7919) % 5 == 0
    logit = -4 + 0.8 * np.log1p(views) + 2.0 * loyal
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": rng.integers(0, 5_000_000, n),
            "item_pv_7d": views,
            "user_cart_7d": rng.poisson(1, n).astype(np.float32),
        }
    )
    return frame, y


@pytest.fixture(scope="module")
def trained():
    train, y_train = _rows(30_000, 0)
    valid, y_valid = _rows(8_000, 1)
    return train_wide_deep(train, y_train, valid, y_valid, SPEC, seed=7, epochs=6, batch_size=512)


def test_learns_popularity_and_user_effects_well_above_chance(trained):
    from sklearn.metrics import roc_auc_score

    test, y = _rows(8_000, 2)
    auc = roc_auc_score(y, predict_wide_deep(trained.model, test, SPEC))
    assert auc > 0.78, auc
    assert trained.history["val_loss"][trained.best_epoch] == min(trained.history["val_loss"])


def test_crosses_need_both_columns():
    assert SPEC.crosses == (("user_id", "item_id"),)  # category_id is not an input here


def test_saved_file_carries_its_preprocessing_and_loads_in_safe_mode(trained, tmp_path):
    test, _ = _rows(500, 3)
    path = tmp_path / "model.keras"
    trained.model.save(path)
    loaded = load_wide_deep(str(path))
    np.testing.assert_allclose(
        predict_wide_deep(loaded, test, SPEC), predict_wide_deep(trained.model, test, SPEC), rtol=1e-5
    )
    spec = spec_of(loaded)
    assert set(spec.numeric) == set(NUMERIC) and set(spec.categorical) == {"user_id", "item_id"}
    assert spec.crosses == SPEC.crosses


def test_missing_features_and_unseen_ids_score_finite(trained):
    test, _ = _rows(200, 4)
    test.loc[::2, "item_pv_7d"] = np.nan  # Feast found no row for the item
    test["user_id"] = 2_000_000_011  # never seen in training
    test = test.drop(columns=["user_cart_7d"])  # a column absent altogether
    scores = predict_wide_deep(trained.model, test, SPEC)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


def test_same_seed_same_model():
    train, y_train = _rows(4_000, 5)
    valid, y_valid = _rows(1_000, 6)
    test, _ = _rows(300, 7)
    a, b = (
        train_wide_deep(train, y_train, valid, y_valid, SPEC, seed=3, epochs=2, batch_size=512)
        for _ in range(2)
    )
    np.testing.assert_allclose(
        predict_wide_deep(a.model, test, SPEC), predict_wide_deep(b.model, test, SPEC), rtol=1e-5
    )


def test_warm_start_fine_tunes_towards_newer_data(trained):
    from sklearn.metrics import roc_auc_score

    from models.kinds.wide_deep import TrainedWideDeep, continue_training

    def shifted(n, seed):
        frame, _ = _rows(n, seed)
        rng = np.random.default_rng(seed + 100)
        # Newer days: carts start to matter, popularity no longer does.
        logit = -3.5 + 1.2 * frame["user_cart_7d"].to_numpy()
        return frame, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)

    new, y_new = shifted(20_000, 10)
    stop, y_stop = shifted(5_000, 11)
    test, y_test = shifted(8_000, 12)
    before = roc_auc_score(y_test, predict_wide_deep(trained.model, test, SPEC))
    clone = load_wide_deep_copy(trained)
    updated = continue_training(
        TrainedWideDeep(clone, SPEC, {}, 0), new, y_new, stop, y_stop, learning_rate=1e-3
    )
    after = roc_auc_score(y_test, predict_wide_deep(updated.model, test, SPEC))
    assert after > before + 0.05, (before, after)


def load_wide_deep_copy(trained):
    """A copy through the saved format, so the shared fixture model stays as trained."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "copy.keras"
        trained.model.save(path)
        return load_wide_deep(str(path))


def test_explanations_credit_what_differs_between_candidates(trained):
    from models.explain import top_contributions
    from models.scoring import wrap

    model = wrap("wide_deep", trained.model, {})
    # One user, three candidates that differ only in their views.
    frame = pd.DataFrame(
        {"user_id": 7919 * 1001, "item_id": [1, 2, 3], "item_pv_7d": [400.0, 20.0, 0.0], "user_cart_7d": 2.0}
    )
    top = {
        i: {c["feature"]: c["contribution"] for c in row}
        for i, row in enumerate(top_contributions(model, frame))
    }
    assert top[0]["item_pv_7d"] > 0.1 and top[2]["item_pv_7d"] < -0.1
    # The same for every candidate: no credit (up to float noise between batch sizes).
    assert all(abs(row.get("user_cart_7d", 0.0)) < 1e-4 for row in top.values())


def test_request_scorer_gives_predict_scores_with_missing_values_and_columns(trained):
    from models.scoring import wrap

    test, _ = _rows(300, 8)
    test.loc[::3, "item_pv_7d"] = np.nan
    test.loc[::5, "item_id"] = np.nan  # an id Feast did not return: -1 in both paths
    expected = trained.model.predict(model_inputs(test, SPEC), verbose=0).reshape(-1)
    model = wrap("wide_deep", trained.model, {})
    for frame, want in ((test, expected), (test.head(1), expected[:1])):
        np.testing.assert_allclose(model.predict(frame), want, rtol=1e-5, atol=1e-7)
    # A column absent altogether scores as it does through predict_wide_deep.
    without = test.drop(columns=["user_cart_7d"])
    np.testing.assert_allclose(
        model.predict(without), predict_wide_deep(trained.model, without, SPEC), rtol=1e-5, atol=1e-7
    )
    assert model.predict(test.head(0)).shape == (0,)


def test_a_long_epoch_shows_its_batches_as_it_goes(caplog):
    """An epoch over millions of rows takes many minutes on a CPU: its batches are logged within it."""
    import keras

    from models.kinds.progress import FitProgress, keras_callback

    caplog.set_level("INFO", logger="models.training.progress")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = np.random.default_rng(0).random((1_000, 3)), np.arange(1_000) % 2
    progress = keras_callback(FitProgress("fit", 2, every_s=0), within_s=0)
    model.fit(x, y, batch_size=100, epochs=2, verbose=0, callbacks=[progress])
    shown = [r.getMessage() for r in caplog.records if r.name == "models.training.progress"]
    within = [m for m in shown if m.startswith("fit: epoch 1, batch 5 of 10 (loss ")]
    assert within and "s left in it" in within[0], shown
    assert any(m.startswith("fit: epoch 2, batch 10 of 10") for m in shown), shown
    assert "fit: 1/2" in " ".join(shown) and "finished after 2" in shown[-1], shown


def test_big_training_sets_take_bigger_steps_and_small_ones_keep_1024_rows():
    # The real slice (46,709 training rows) keeps 1,024-row steps; 6.7 M rows (100 M events) take
    # 8,192-row steps, 823 per epoch instead of 6,587.
    assert batch_size_for(46_709) == 1024
    assert batch_size_for(1_024_000) == 1024  # exactly 1,000 steps
    assert batch_size_for(1_024_001) == 2048
    assert batch_size_for(3_000_000) == 4096
    assert batch_size_for(6_744_770) == 8192
    assert batch_size_for(100_000_000) == 8192  # at most 8,192, then more steps


def test_an_unset_batch_size_is_worked_out_from_the_training_rows(trained):
    assert trained.params["batch_size"] == 512  # given: kept
    train, y_train = _rows(3_000, 0)
    valid, y_valid = _rows(1_000, 1)
    fitted = train_wide_deep(train, y_train, valid, y_valid, SPEC, seed=7, epochs=1)
    assert fitted.params["batch_size"] == 1024
