import pandas as pd

from feature_repo.contract import LABEL_WINDOW
from models.data.labels import label_page_views

T0 = pd.Timestamp("2017-11-26 00:00", tz="UTC")
END = T0 + pd.Timedelta(days=2)


def _events(rows):
    return pd.DataFrame(
        [(u, i, 1, b, T0 + pd.Timedelta(hours=h)) for u, i, b, h in rows],
        columns=["user_id", "item_id", "category_id", "behavior", "event_timestamp"],
    )


def test_view_followed_by_intent_within_the_window_is_positive():
    hours = LABEL_WINDOW / pd.Timedelta(hours=1)
    labels = label_page_views(
        _events(
            [
                (1, 10, "pv", 0),
                (1, 10, "cart", 1),  # within the window: positive
                (1, 11, "pv", 0),
                (1, 11, "buy", hours + 1),  # too late: negative
                (1, 12, "fav", 2),
                (1, 12, "pv", 3),  # intent before the view does not count
                (2, 10, "pv", 0),  # another user's intent does not count
            ]
        ),
        LABEL_WINDOW,
        END,
    )
    got = {(r.user_id, r.item_id): r.label for r in labels.itertuples()}
    assert got == {(1, 10): 1, (1, 11): 0, (1, 12): 0, (2, 10): 0}


def test_views_too_close_to_the_end_are_not_labelled_and_duplicates_count_once():
    labels = label_page_views(
        _events([(1, 10, "pv", 1), (1, 10, "pv", 1), (1, 11, "pv", 47)]), LABEL_WINDOW, END
    )
    assert labels[["user_id", "item_id"]].values.tolist() == [[1, 10]]
