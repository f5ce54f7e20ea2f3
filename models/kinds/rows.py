"""Training rows as blocks, so that a kind can fit on more rows than fit in memory.

A kind fits on `Rows`: a sequence of blocks (a Parquet row group, or a slice of an in-memory
frame), each read as a pandas frame of only the columns asked for. XGBoost streams the blocks into
a quantile DMatrix, Keras shuffles a buffer of blocks at a time; neither ever holds a copy of the
whole frame. Importable without Feast or MLflow (pyarrow and pandas only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Rows per block of an in-memory frame (a Parquet file's blocks are its row groups).
FRAME_BLOCK_ROWS = 65_536


class Rows:
    """Blocks of rows, read one at a time."""

    def block_rows(self) -> list[int]:
        """Rows in each block, in storage order."""
        raise NotImplementedError

    def block(self, index: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Block `index` with only `columns` (all when None): the columns absent are left out."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(sum(self.block_rows()))

    def frames(self, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """Every block in storage order."""
        for index in range(len(self.block_rows())):
            yield self.block(index, columns)

    def column(self, name: str) -> np.ndarray:
        """One column over all rows (small: a label, an id)."""
        parts = [frame[name].to_numpy() for frame in self.frames([name])]
        return np.concatenate(parts) if parts else np.zeros(0)

    def to_frame(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """All rows in one frame: for small sets (tests, warm start) only."""
        frames = list(self.frames(columns))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


class FrameRows(Rows):
    """An in-memory frame seen as blocks of `block_size` rows."""

    def __init__(self, frame: pd.DataFrame, block_size: int = FRAME_BLOCK_ROWS) -> None:
        self.frame, self.block_size = frame, block_size

    def block_rows(self) -> list[int]:
        n, size = len(self.frame), self.block_size
        return [min(size, n - start) for start in range(0, n, size)]

    def block(self, index: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        chosen = self.frame if columns is None else self.frame[[c for c in columns if c in self.frame]]
        start = index * self.block_size
        return chosen.iloc[start : start + self.block_size]


class ParquetRows(Rows):
    """Parquet files read row group by row group (each file's schema may differ only in order)."""

    def __init__(self, files: Sequence[Path]) -> None:
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        self._groups: list[tuple[int, int, int]] = []  # (file, row group, rows)
        self._names: list[set[str]] = []
        for number, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            self._names.append(set(meta.schema.names))
            self._groups += [(number, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]

    def block_rows(self) -> list[int]:
        return [rows for _, _, rows in self._groups]

    def block(self, index: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        import pyarrow.parquet as pq

        number, group, _ = self._groups[index]
        names = None if columns is None else [c for c in columns if c in self._names[number]]
        table = pq.ParquetFile(self.files[number]).read_row_group(group, columns=names)
        return table.to_pandas()


def as_rows(data: pd.DataFrame | Rows) -> Rows:
    """`data` as Rows: a frame is wrapped, Rows are returned as they are."""
    return data if isinstance(data, Rows) else FrameRows(data)
