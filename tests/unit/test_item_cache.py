"""The ranker's item cache: values come back exactly as they were put, rows expire and the least
recently used items go first."""

from __future__ import annotations

import numpy as np
import pytest

from models.features.item_cache import ItemCache, block_of, merge, typed_column

KINDS = ["f", "i", "b", "O"]


def _rows(items: list[int]) -> list[list]:
    """One list per feature: a float, an int, a bool and a list, some of them missing."""
    return [
        [None if i % 7 == 0 else i / 4 for i in items],
        [i * 10 for i in items],
        [i % 2 == 0 for i in items],
        [[i, i + 1] for i in items],
    ]


def _put(cache: ItemCache, items: list[int], expires: float = 100.0) -> None:
    cache.put(items, block_of(_rows(items), KINDS), np.full(len(items), expires))


def _typed(values: list) -> list[tuple[str, str]]:
    return [(type(v).__name__, repr(v)) for v in values]


def test_values_come_back_with_their_types_and_missing_values():
    cache = ItemCache(KINDS, capacity=100)
    items = list(range(1, 30))
    _put(cache, items)
    held, block = cache.get(items, now=0.0)
    assert held.all()
    for k, expected in enumerate(_rows(items)):
        assert _typed(block.python(k)) == _typed(expected)
    assert block.kinds == KINDS
    assert block.values[0].dtype == np.float64 and not block.present[0][items.index(7)]


def test_a_value_of_another_type_turns_the_column_to_objects_and_keeps_it_exact():
    cache = ItemCache(["f"], capacity=10)
    cache.put([1], block_of([[0.5]], ["f"]), np.array([100.0]))
    cache.put([2], block_of([[3]], ["f"]), np.array([100.0]))  # an int in a float column
    _, block = cache.get([1, 2], now=0.0)
    assert _typed(block.python(0)) == [("float", "0.5"), ("int", "3")]
    assert typed_column([1, 2**70], "i")[2] == "O"  # beyond int64


def test_rows_expire_and_a_row_put_again_replaces_the_old_one():
    cache = ItemCache(KINDS, capacity=10)
    _put(cache, [1, 2], expires=10.0)
    assert cache.get([1, 2], now=9.9)[0].tolist() == [True, True]
    assert cache.get([1, 2], now=10.0)[0].tolist() == [False, False]
    cache.put([1], block_of([[9.5], [1], [True], ["x"]], KINDS), np.array([20.0]))
    held, block = cache.get([1, 2], now=15.0)
    assert held.tolist() == [True, False] and block.python(0) == [9.5] and block.python(3) == ["x"]
    assert len(cache) == 2


def test_the_least_recently_used_items_are_evicted_first():
    cache = ItemCache(KINDS, capacity=3)
    _put(cache, [1, 2, 3])
    cache.get([1], now=0.0)  # 1 is used again: 2 is now the oldest
    _put(cache, [4])
    assert cache.get([1, 2, 3, 4], now=0.0)[0].tolist() == [True, False, True, True]
    _put(cache, [5, 6, 7, 8])  # more than it holds: the last ones are kept
    assert cache.get([5, 6, 7, 8], now=0.0)[0].tolist() == [False, True, True, True]
    assert len(cache) == 3


def test_a_full_cache_evicts_a_sixteenth_at_once_and_keeps_the_values_of_the_rest():
    cache = ItemCache(KINDS, capacity=4096)
    items = list(range(10, 4106))
    _put(cache, items)
    assert len(cache) == 4096
    cache.get(items[256:], now=0.0)
    _put(cache, [99_999])
    assert len(cache) == 4096 - 256 + 1
    held, block = cache.get(items, now=0.0)
    assert not held[:256].any() and held[256:].all()
    assert _typed(block.python(1)) == _typed(_rows(items[256:])[1])


def test_merge_interleaves_hits_and_misses_in_request_order():
    hits = block_of([[1.0, 3.0], [1, 3]], ["f", "i"])
    misses = block_of([[2.0], ["two"]], ["f", "i"])  # a string among ints: an object column
    merged = merge(hits, misses, np.array([True, False, True]))
    assert merged.python(0) == [1.0, 2.0, 3.0] and merged.python(1) == [1, "two", 3]
    assert merged.kinds == ["f", "O"]
    assert merged.found().tolist() == [True, True, True]
    assert merged.take(np.array([2, 2, 0])).python(0) == [3.0, 3.0, 1.0]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        ItemCache(KINDS, capacity=0)
