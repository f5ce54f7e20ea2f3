"""Explanations must say which feature moved an item's score, in log-odds that add up."""

import numpy as np
import pandas as pd

from models.explain import contributions, top_contributions
from models.kinds.xgb import train_xgb
from models.scoring import wrap

FEATURES = ["item_pv_7d", "user_cart_7d", "noise"]


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)).astype(np.float32), columns=FEATURES)
    logit = -2 + 1.5 * frame["item_pv_7d"] + 0.5 * frame["user_cart_7d"]
    return frame, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def test_xgboost_contributions_add_up_to_the_logit_and_name_the_driving_feature():
    x, y = _rows(20_000, 0)
    xv, yv = _rows(5_000, 1)
    model = wrap(
        "xgboost", train_xgb(x.to_numpy(), y, xv.to_numpy(), yv, FEATURES).model, {"features": FEATURES}
    )
    candidates = pd.DataFrame(
        {"item_pv_7d": [2.5, 0.0, -2.5], "user_cart_7d": [0.3] * 3, "noise": [0.1, -0.2, 0.0]}
    )
    values = contributions(model, candidates)
    p = model.predict(candidates)
    bias = np.log(p / (1 - p)) - values.sum(axis=1).to_numpy()
    np.testing.assert_allclose(bias, bias[0], atol=1e-4)  # the same expected value for every item
    top = top_contributions(model, candidates, top=2)
    assert top[0][0]["feature"] == "item_pv_7d" and top[0][0]["contribution"] > 0.5
    assert top[2][0]["feature"] == "item_pv_7d" and top[2][0]["contribution"] < -0.5
    assert top[0][0]["value"] == 2.5
