import numpy as np
from sklearn.metrics import roc_auc_score

from models.kinds.xgb import continue_xgb, predict_ctr, train_xgb


def _rows(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    logit = -2 + 1.5 * x[:, 0] + shift * x[:, 1]
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def test_warm_start_adds_trees_and_adapts_to_newer_data():
    features = ["a", "b", "c"]
    x, y = _rows(20_000, 0)
    xv, yv = _rows(5_000, 1)
    base = train_xgb(x, y, xv, yv, features, n_estimators=100)
    # Newer days: feature b starts to matter.
    xn, yn = _rows(20_000, 2, shift=1.5)
    xs, ys = _rows(5_000, 3, shift=1.5)
    xt, yt = _rows(10_000, 4, shift=1.5)
    updated = continue_xgb(base.model, xn, yn, xs, ys, features, learning_rate=0.1)
    assert updated.model.get_booster().num_boosted_rounds() > base.model.get_booster().num_boosted_rounds()
    before = roc_auc_score(yt, predict_ctr(base.model, xt))
    after = roc_auc_score(yt, predict_ctr(updated.model, xt))
    assert after > before + 0.03, (before, after)


def test_the_scorer_predicts_requests_on_one_thread_with_the_models_own_values():
    import pandas as pd

    from models.kinds.xgb import SINGLE_THREAD_ROWS, XGBoostKind, _single_threaded
    from models.scoring import wrap

    features = ["a", "b", "c"]
    x, y = _rows(5_000, 0)
    xv, yv = _rows(2_000, 1)
    trained = train_xgb(x, y, xv, yv, features, n_estimators=30)
    model = wrap(XGBoostKind.name, trained.model, {"features": features})
    assert _single_threaded(trained.model).get_params()["n_jobs"] == 1
    assert trained.model.get_params()["n_jobs"] != 1  # the trained model keeps its threads
    for n in (100, SINGLE_THREAD_ROWS + 1):  # a request's rows, and a frame scored on every thread
        frame = pd.DataFrame(xv[:n] if n <= len(xv) else np.tile(xv, (2, 1))[:n], columns=features)
        expected = predict_ctr(trained.model, frame.to_numpy(dtype=np.float32))
        np.testing.assert_array_equal(model.predict(frame), expected)
