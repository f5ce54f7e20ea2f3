"""Comparing the batch job's outputs column by column: ids and counts exactly, floats to 1e-12
relative, list columns element by element."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.contract import EVENT_TIMESTAMP


def _table(frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    return pa.Table.from_pandas(frame, preserve_index=False)


def _sorted(table: pa.Table, key: str) -> pa.Table:
    stamps = table[EVENT_TIMESTAMP].cast(pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index(EVENT_TIMESTAMP), EVENT_TIMESTAMP, stamps)
    return table.sort_by([(key, "ascending"), (EVENT_TIMESTAMP, "ascending")])


def assert_same_rows(new, old, key: str) -> None:
    """Every column of `old` in `new`, row for row after sorting by (key, timestamp)."""
    new, old = _sorted(_table(new), key), _sorted(_table(old), key)
    assert new.num_rows == old.num_rows, (new.num_rows, old.num_rows)
    assert set(new.column_names) == set(old.column_names), (new.column_names, old.column_names)
    for name in old.column_names:
        a, b = new[name].combine_chunks(), old[name].combine_chunks()
        if pa.types.is_list(b.type) or pa.types.is_large_list(b.type):
            assert a.value_lengths().to_pylist() == b.value_lengths().to_pylist(), name
            a, b = a.flatten(), b.flatten()
        if pa.types.is_floating(b.type):
            np.testing.assert_allclose(
                a.to_numpy(zero_copy_only=False).astype(np.float64),
                b.to_numpy(zero_copy_only=False).astype(np.float64),
                rtol=1e-12,
                atol=0,
                err_msg=name,
            )
            assert pa.types.is_floating(a.type) and a.type.bit_width == b.type.bit_width, (
                name,
                a.type,
                b.type,
            )
        elif pa.types.is_timestamp(b.type):
            assert a.cast(b.type).equals(b), name
        else:
            assert a.type == b.type, (name, a.type, b.type)
            assert a.equals(b), name


def frame_equal_rows(new: pd.DataFrame, old: pd.DataFrame, key: str) -> None:
    assert_same_rows(new, old, key)
