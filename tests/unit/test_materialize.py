"""The bounded materialization's two halves, on real Parquet files and Feast's own conversion:
which row of each entity it takes, and the bytes it writes for each value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.features.materialize import _Columns, _encoded, _timestamps, latest_rows

T0 = datetime(2017, 12, 1, 16, 0, tzinfo=UTC)


def _stamp(hours: float) -> int:
    return int((T0 + timedelta(hours=hours)).timestamp() * 1_000_000)


def _write(path, rows: list[tuple], created: bool = False):
    keys, hours, values, *rest = zip(*rows, strict=True)
    columns = {
        "user_id": pa.array(keys, pa.int64()),
        "event_timestamp": pa.array([_stamp(h) for h in hours], pa.timestamp("us", tz="UTC")),
        "x": pa.array(values, pa.float32()),
    }
    if created:
        columns["created"] = pa.array([_stamp(h) for h in rest[0]], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(columns), path)
    return _Columns(["user_id"], ["x"], "event_timestamp", "created" if created else "")


def _read(path, columns, start_h: float, end_h: float, batch_rows: int = 1000) -> dict[int, float]:
    batches = list(
        latest_rows(
            path, columns, T0 + timedelta(hours=start_h), T0 + timedelta(hours=end_h), batch_rows, 256
        )
    )
    assert all(b.num_rows <= batch_rows for b in batches)
    table = pa.Table.from_batches(batches) if batches else pa.table({"user_id": [], "x": []})
    return dict(zip(table["user_id"].to_pylist(), table["x"].to_pylist(), strict=True))


def test_the_newest_row_per_entity_within_the_interval_both_ends_included(tmp_path):
    path = tmp_path / "s.parquet"
    columns = _write(
        path,
        [(1, 0, 1.0), (1, 24, 2.0), (1, 49, 3.0), (2, 48, 4.0), (2, -1, 5.0), (3, 100, 6.0), (4, 0, 7.0)],
    )
    # [0 h, 48 h]: user 1's 49 h row is after the end, user 3's only row too; 0 h and 48 h are in.
    assert _read(path, columns, 0, 48) == {1: 2.0, 2: 4.0, 4: 7.0}


def test_ties_go_to_the_newest_created_then_to_the_first_row_in_the_file(tmp_path):
    path = tmp_path / "s.parquet"
    columns = _write(path, [(1, 5, 1.0), (1, 5, 2.0), (2, 5, 3.0), (2, 5, 4.0)], created=False)
    assert _read(path, columns, 0, 10) == {1: 1.0, 2: 3.0}
    created = _write(path, [(1, 5, 1.0, 1), (1, 5, 2.0, 2), (2, 5, 3.0, 2), (2, 5, 4.0, 1)], created=True)
    assert _read(path, created, 0, 10) == {1: 2.0, 2: 3.0}


def test_many_entities_come_in_batches_of_at_most_the_batch_size(tmp_path):
    path = tmp_path / "s.parquet"
    n = 25_000
    rows = [(i, 1, float(i)) for i in range(n)] + [(i, 2, float(-i)) for i in range(0, n, 3)]
    columns = _write(path, rows)
    got = _read(path, columns, 0, 10, batch_rows=4096)
    assert len(got) == n
    assert all(v == (-i if i % 3 == 0 else i) for i, v in got.items())


def test_a_missing_source_is_an_error_not_an_empty_view(tmp_path):
    columns = _Columns(["user_id"], ["x"], "event_timestamp", "")
    with pytest.raises(FileNotFoundError, match="build the features"):
        list(latest_rows(tmp_path / "none.parquet", columns, T0, T0, 10, 256))


def _feast_bytes(values, value_type) -> list[bytes]:
    from feast.type_map import python_values_to_proto_values

    return [p.SerializeToString() for p in python_values_to_proto_values(values, value_type)]


def test_float32_values_are_the_bytes_feasts_conversion_writes():
    from feast.value_type import ValueType

    tiny = np.float32(1e-45)  # subnormal
    values = np.array([0.0, -0.0, 1.5, np.nan, np.inf, -np.inf, tiny, 3.4e38, 0.1, 7.0], dtype=np.float32)
    column = pa.array(values, from_pandas=False)
    assert _encoded(column, ValueType.FLOAT) == _feast_bytes(
        column.to_numpy(zero_copy_only=False), ValueType.FLOAT
    )
    as_double = pa.array(values.astype(np.float64))  # a float64 source column of a Float32 feature
    assert _encoded(as_double, ValueType.FLOAT) == _feast_bytes(values.astype(np.float64), ValueType.FLOAT)


def test_integer_and_list_values_are_the_bytes_feasts_conversion_writes():
    from feast.value_type import ValueType

    ints = pa.array([7, -1, 7, 0, 2**62, 7], pa.int64())
    assert _encoded(ints, ValueType.INT64) == _feast_bytes(ints.to_numpy(), ValueType.INT64)
    lists = pa.array([[1, 2], [], None, [-5, 2**40]], pa.list_(pa.int64()))
    expected = _feast_bytes(lists.to_numpy(zero_copy_only=False), ValueType.INT64_LIST)
    assert _encoded(lists, ValueType.INT64_LIST) == expected
    floats = pa.array([[0.5, 0.25], [], [np.float32(0.1)]], pa.list_(pa.float32()))
    expected = _feast_bytes(floats.to_numpy(zero_copy_only=False), ValueType.FLOAT_LIST)
    assert _encoded(floats, ValueType.FLOAT_LIST) == expected


def test_timestamps_are_feasts_serialized_timestamps_with_their_nanoseconds():
    from google.protobuf.timestamp_pb2 import Timestamp

    stamps = pa.array(
        [_stamp(0), _stamp(0.5), _stamp(0), _stamp(1e-6 / 3600 * 7)], pa.timestamp("us", tz="UTC")
    )
    encoded, nanos = _timestamps(stamps)
    for value, got, ns in zip(stamps.to_pylist(), encoded, nanos.tolist(), strict=True):
        expected = Timestamp()
        expected.FromDatetime(value)
        assert got == expected.SerializeToString()
        assert ns == expected.seconds * 1_000_000_000 + expected.nanos
