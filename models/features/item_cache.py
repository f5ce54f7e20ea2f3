"""The ranker's cache of item feature rows, kept as NumPy columns with one slot per item.

A request asks for ~100 candidates out of a catalogue of millions. Which share of them the cache
holds decides how many rows the request reads from the online store, so the cache should hold as
many items as memory allows. Rows kept as Python tuples of Python values cost ~1 kB an item. Here
an item costs its features' 8 bytes each, plus a presence byte per feature, plus a dictionary entry
from its id to its slot: ~300 bytes with 19 features. A hit is then a NumPy take per feature, not a
Python loop per value.

Values are kept exactly: a column holds floats, ints or bools only while every value put in it is
a Python value of that type (or None). Anything else turns it into an object column for good. So a
read gives back the values that were put, of the same types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A column's kind -> (the one Python type its values have, its NumPy dtype, the filler of an empty slot)
_KINDS: dict[str, tuple[type, Any, Any]] = {
    "f": (float, np.float64, 0.0),
    "i": (int, np.int64, 0),
    "b": (bool, np.bool_, False),
    "O": (object, object, None),
}


def typed_column(values: Sequence[Any], kind: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A list of Python values (None: no value) as (values, present, kind): a `kind` array where
    every value has that kind's Python type, else an object array."""
    present = np.fromiter((v is not None for v in values), np.bool_, len(values))
    python_type, dtype, filler = _KINDS[kind]
    if kind != "O" and all(type(v) is python_type for v in values if v is not None):
        with contextlib.suppress(OverflowError):  # an int beyond int64 is kept as an object
            array = np.fromiter((filler if v is None else v for v in values), dtype, len(values))
            return array, present, kind
    array = np.empty(len(values), object)
    array[:] = list(values)
    return array, present, "O"


@dataclass
class Block:
    """Feature values of a list of items: per feature, the values and whether each is present."""

    values: list[np.ndarray]
    present: list[np.ndarray]
    kinds: list[str]

    def take(self, positions: np.ndarray) -> Block:
        return Block(
            [v[positions] for v in self.values], [p[positions] for p in self.present], list(self.kinds)
        )

    def found(self) -> np.ndarray:
        """Per item, whether it has any feature value: the store has a row for it."""
        if not self.present:
            return np.zeros(0, np.bool_)
        return np.logical_or.reduce(self.present)

    def python(self, k: int) -> list[Any]:
        """Feature k as Python values, None where absent: what the online store's reads returned."""
        values = self.values[k].tolist()
        present = self.present[k]
        if present.all():
            return values
        return [v if ok else None for v, ok in zip(values, present.tolist(), strict=True)]


def block_of(columns: Sequence[Sequence[Any]], kinds: Sequence[str]) -> Block:
    """A Block from one list of Python values per feature."""
    parts = [typed_column(values, kind) for values, kind in zip(columns, kinds, strict=True)]
    return Block([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])


def merge(first: Block, second: Block, into_first: np.ndarray) -> Block:
    """The rows of two blocks interleaved: row j comes from `first` where into_first[j], else from
    `second`, each block's rows in order."""
    n = len(into_first)
    values, present, kinds = [], [], []
    for a, pa, ka, b, pb, kb in zip(
        first.values, first.present, first.kinds, second.values, second.present, second.kinds, strict=True
    ):
        kind = ka if ka == kb else "O"
        out = np.empty(n, _KINDS[kind][1])
        out[into_first], out[~into_first] = a, b
        mask = np.empty(n, np.bool_)
        mask[into_first], mask[~into_first] = pa, pb
        values.append(out)
        present.append(mask)
        kinds.append(kind)
    return Block(values, present, kinds)


class ItemCache:
    """At most `capacity` items' feature rows, each until its expiry time; the least recently used
    go first when it is full. Not thread-safe: the reader holds its lock around every call."""

    def __init__(self, kinds: Sequence[str], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._kinds = list(kinds)
        self._slots: dict[int, int] = {}
        self._free: list[int] = []
        self._tick = 0
        self._allocate()

    def _allocate(self) -> None:
        """Every column at its full length at once. Numeric columns are zeroed pages the system
        only commits as slots are written, so memory follows the items held, and a full cache's
        columns are never copied to grow them (a pause of tens of milliseconds at a million items)."""
        size = self.capacity
        self._ids = np.full(size, -1, np.int64)
        self._expires = np.zeros(size)
        self._used = np.zeros(size, np.int64)
        self._values = [
            np.full(size, None, object) if k == "O" else np.zeros(size, _KINDS[k][1]) for k in self._kinds
        ]
        self._present = [np.zeros(size, np.bool_) for _ in self._kinds]
        self._free = list(range(size - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._slots)

    def clear(self) -> None:
        self._slots.clear()
        self._allocate()

    def get(self, items: Sequence[int], now: float) -> tuple[np.ndarray, Block]:
        """Which of `items` are held and not expired (a mask over `items`), and their rows (a copy,
        in order). The hits count as used now."""
        slots = np.fromiter((self._slots.get(i, -1) for i in items), np.int64, len(items))
        held = slots >= 0
        held[held] = self._expires[slots[held]] > now
        hits = slots[held]
        self._tick += 1
        self._used[hits] = self._tick
        block = Block([v[hits] for v in self._values], [p[hits] for p in self._present], list(self._kinds))
        return held, block

    def put(self, items: Sequence[int], block: Block, expires: np.ndarray) -> None:
        """Keep these items' rows (one block row per item, each item once) until their expiry times;
        beyond the capacity only the last ones are kept."""
        if len(items) > self.capacity:
            keep = len(items) - self.capacity
            items, block, expires = items[keep:], block.take(np.arange(keep, len(items))), expires[keep:]
        for k, kind in enumerate(block.kinds):
            if kind != self._kinds[k]:
                self._to_object(k)
        for item in items:  # an item put again is put afresh, so eviction cannot take it
            slot = self._slots.pop(item, None)
            if slot is not None:
                self._ids[slot] = -1
                self._free.append(slot)
        self._make_room(len(items))
        slots = np.empty(len(items), np.int64)
        for j, item in enumerate(items):
            slots[j] = self._slots[item] = self._free.pop()
        self._tick += 1
        self._ids[slots] = np.asarray(items, np.int64)
        self._expires[slots] = expires
        self._used[slots] = self._tick
        for k, (values, present) in enumerate(zip(block.values, block.present, strict=True)):
            self._values[k][slots] = values
            self._present[k][slots] = present

    def _to_object(self, k: int) -> None:
        values = np.empty(self.capacity, object)
        values[:] = self._values[k].tolist()
        self._values[k], self._kinds[k] = values, "O"

    def _make_room(self, needed: int) -> None:
        """At least `needed` free slots: the least recently used items evicted if need be (a
        sixteenth of the capacity at once, so eviction's cost is spread over many puts)."""
        if len(self._free) >= needed:
            return
        held = np.flatnonzero(self._ids >= 0)
        count = min(len(held), max(needed - len(self._free), self.capacity // 16))
        oldest = held[np.argpartition(self._used[held], count - 1)[:count]] if count < len(held) else held
        for slot in oldest.tolist():
            del self._slots[int(self._ids[slot])]
        self._ids[oldest] = -1
        for present in self._present:
            present[oldest] = False
        self._free.extend(oldest.tolist())
