"""The online reader builds its frame from NumPy arrays where it can: the frame must stay the one
pandas infers from Feast's lists, whatever the values."""

from __future__ import annotations

import pandas as pd
import pytest

from models.features.online_reader import _column

CASES = {
    "floats": [0.5, 2.0, 1e300],
    "ints": [1, 2, 3_000_000_000],
    "ints and floats": [1, 2.5],
    "bools": [True, False],
    "floats with None": [0.5, None],
    "ints with None": [1, None],
    "all None": [None, None],
    "nan": [float("nan"), 1.0],
    "strings": ["a", "bc"],
    "lists of one length": [[1, 2], [3, 4]],
    "lists of two lengths": [[1], [2, 3]],
    "beyond int64": [2**63, 1],
    "empty": [],
    "a float, then a huge int": [0.5, 2**63],
}


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_a_column_equals_what_pandas_infers_from_the_list(values):
    got = pd.DataFrame({"c": _column(values)}, copy=False)
    pd.testing.assert_frame_equal(got, pd.DataFrame({"c": values}), check_exact=True)
