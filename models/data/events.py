"""The event schema's reader: raw behaviour logs (the Taobao CSV format) in, canonical events
(feature_repo/contract.py) out.

Nothing is dropped here. Values that do not parse become nulls, which validation quarantines,
and every row keeps its line number in the source file so a quarantined row can be found again.
With CTR_USER_ID_KEY set, user ids are replaced by their pseudonyms here (models/data/privacy.py): the
lake, the quarantine and everything downstream hold no raw id, and a quarantined row's raw values
are found through its line number in the source file.

The streamed reader (`iter_events`) parses blocks of well-formed lines with Arrow's CSV reader and
anything else line by line with pandas, as `load_events` reads every line: the same rows, values,
line numbers and chunks either way.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    CATEGORY_ID,
    EVENT_COLUMNS,
    EVENT_TIMESTAMP,
    ID_COLUMNS,
    ITEM_ID,
    RAW_COLUMNS,
    USER_ID,
)

SOURCE_ROW = "source_row"
PARTITION_PREFIX = "date="  # a day partition of raw events: <dir>/date=YYYY-MM-DD/*.csv[.gz]


def raw_event_files(path: Path | str, days: Iterable[date | datetime] | None = None) -> list[Path]:
    """The files holding raw events: `path` itself for a file; for a folder of day partitions
    (`date=YYYY-MM-DD/*.csv` or `*.csv.gz`, days in the shop's time zone), the files of `days`
    (all days when None), oldest day first. Only the days asked for are read: that is what the
    partitions are for."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    wanted = None if days is None else {f"{PARTITION_PREFIX}{d:%Y-%m-%d}" for d in days}
    folders = sorted(p for p in path.glob(f"{PARTITION_PREFIX}*") if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{path} holds no day partitions ({PARTITION_PREFIX}YYYY-MM-DD/)")
    return [
        f
        for folder in folders
        if wanted is None or folder.name in wanted
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name.endswith((".csv", ".csv.gz"))
    ]


def partition_day(file: Path | str) -> str | None:
    """The day (YYYY-MM-DD) of a raw-event file in a day partition, else None."""
    folder = Path(file).parent.name
    return folder.removeprefix(PARTITION_PREFIX) if folder.startswith(PARTITION_PREFIX) else None


def read_raw_events(path: Path | str, days: Iterable[date | datetime] | None = None) -> pd.DataFrame:
    """Read headerless Taobao UserBehavior events as strings, one row per line: a CSV (plain or
    gzip), or the files of `days` in a folder of day partitions (see `raw_event_files`), whose
    lines are numbered through the files in day order."""
    frames = [_read_raw_file(f) for f in raw_event_files(path, days)]
    if not frames:
        frames = [_read_raw_file(None)]
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    raw[SOURCE_ROW] = np.arange(1, len(raw) + 1)
    return raw


def _read_raw_file(path: Path | None) -> pd.DataFrame:
    """One file's lines split into the raw columns (None: no lines), numbered from 1."""
    chunks = list(_raw_chunks(path, None))
    raw = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    raw[SOURCE_ROW] = range(1, len(raw) + 1)
    return raw


def _raw_chunks(path: Path | BinaryIO | None, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """A file's (or a binary stream's) lines split into the raw columns, `chunk_rows` lines at a
    time (None: all at once), numbered through the file from 1; always at least one (maybe
    empty) chunk."""
    import csv

    readers: Iterable[pd.DataFrame] = []
    if path is not None:
        with contextlib.suppress(pd.errors.EmptyDataError):  # an empty file: no lines
            readers = pd.read_csv(
                path,
                header=None,
                names=["line"],
                dtype=str,
                keep_default_na=False,
                sep="\x01",  # no field separator: one column holding the whole line
                quoting=csv.QUOTE_NONE,
                engine="c",
                chunksize=chunk_rows,
                encoding_errors="replace",  # bytes that are not UTF-8: a bad line, quarantined
            )
            if chunk_rows is None:
                readers = [readers]
    offset, chunks = 0, 0
    for chunk in readers:
        raw = _split_lines(chunk["line"], offset)
        offset, chunks = offset + len(raw), chunks + 1
        yield raw
    if not chunks:
        yield _split_lines(pd.Series([], dtype=str, name="line"), 0)


def _split_lines(lines: pd.Series, offset: int) -> pd.DataFrame:
    """Lines split into the raw columns, numbered from offset + 1.

    Each line is split here rather than by the CSV parser, which would take an extra field on the
    first line for an index and cut extra fields elsewhere silently. A line with missing fields gets
    empty ones; a line with extra fields keeps its first four with the timestamp blanked. Either
    way validation quarantines it.
    """
    lines = lines.reset_index(drop=True)
    width = len(RAW_COLUMNS)
    parts = lines.str.split(",", expand=True) if len(lines) else pd.DataFrame(index=lines.index)
    parts = parts.reindex(columns=range(max(width + 1, parts.shape[1])))
    extra = parts.iloc[:, width:].notna().any(axis=1)
    raw = parts.iloc[:, :width].fillna("").astype(object).set_axis(list(RAW_COLUMNS), axis=1)
    raw.loc[extra, RAW_COLUMNS[-1]] = ""
    raw.insert(0, SOURCE_ROW, range(offset + 1, offset + len(raw) + 1))
    return raw


def no_events() -> pd.DataFrame:
    """An empty frame of canonical events, in the dtypes the reader gives."""
    return to_canonical(_split_lines(pd.Series([], dtype=str, name="line"), 0))


def iter_events(
    path: Path | str, user_id_key: str, chunk_rows: int, days: Iterable[date | datetime] | None = None
) -> Iterator[tuple[Path, pd.DataFrame]]:
    """The canonical events of a raw CSV or of a folder's day partitions (`days`' only when given)
    as (file, chunk) pairs of at most `chunk_rows` rows: memory bounded by the chunk, not the file.
    Lines are numbered through the files in day order, as `load_events` numbers them; every file
    gives at least one (maybe empty) chunk."""
    from models.data.privacy import pseudonymise

    offset = 0
    for file in raw_event_files(path, days):
        rows = 0
        for events in _canonical_chunks(file, chunk_rows):
            events[SOURCE_ROW] += offset
            events[USER_ID] = pseudonymise(events[USER_ID], user_id_key)
            rows += len(events)
            yield file, events
        offset += rows


# Bytes the two readers may split into lines differently ("\r"), or that the line-by-line
# reader takes for its own separator: from a block holding one, the rest of its file goes that way.
_LINE_BREAKERS = (b"\r", b"\x00", b"\x01")
_ID_LIMIT = 2**53  # ids the line-by-line reader keeps exact in a chunk with a missing one
_SECONDS_LIMIT = 2**33  # Unix seconds well inside what a timestamp holds


def _canonical_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """`to_canonical` of `_raw_chunks(path, chunk_rows)`, chunk for chunk, at the speed of Arrow's
    CSV parser.

    The file is cut into blocks of `chunk_rows` lines, and each block of well-formed lines (five
    fields, whole decimal numbers, UTF-8) is parsed by Arrow into the same frame the line-by-line
    reader gives. Any block Arrow refuses, or whose values the two readers might read differently
    (hexadecimal digits Arrow accepts, huge ids, far timestamps), goes through the line-by-line
    reader; from a block that reader would cut differently (a blank line it skips, "\r"), the
    rest of the file does, so the chunks are the ones it gives. Every line is kept and judged
    as before.
    """
    offset, chunks = 0, 0
    with _open_raw(path) as handle:
        blocks = _LineBlocks(handle, chunk_rows)
        for block in blocks:
            lines = block.count(b"\n") + (not block.endswith(b"\n"))
            events = None
            if not any(b in block for b in _LINE_BREAKERS):
                events = _arrow_canonical(block, offset, lines)
                if events is None:
                    (raw,) = _raw_chunks(io.BytesIO(block), None)
                    events = to_canonical(raw) if len(raw) == lines else None
                    if events is not None:
                        events[SOURCE_ROW] += offset
            if events is None:  # the rest of the file, from this block on, line by line
                for raw in _raw_chunks(blocks.rest(block), chunk_rows):
                    raw[SOURCE_ROW] += offset  # numbered through the rest from 1
                    yield to_canonical(raw)
                return
            offset, chunks = offset + len(events), chunks + 1
            yield events
    if not chunks:
        yield no_events()


def _open_raw(path: Path) -> BinaryIO:
    import gzip

    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")  # type: ignore[return-value]


class _LineBlocks:
    """A binary file as blocks of `lines` "\n"-ended lines (the last may be shorter), read a few
    MB at a time; `rest` gives a block and everything after it as one stream again."""

    def __init__(self, handle: BinaryIO, lines: int, read_bytes: int = 1 << 22) -> None:
        self._handle, self._lines, self._read_bytes = handle, lines, read_bytes
        self._pending = bytearray()

    def __iter__(self) -> Iterator[bytes]:
        held = 0
        while True:
            piece = self._handle.read(self._read_bytes)
            self._pending += piece
            held += piece.count(b"\n")
            while held >= self._lines or (not piece and self._pending):
                cut = len(self._pending)
                if held >= self._lines:
                    ends = np.flatnonzero(np.frombuffer(self._pending, dtype=np.uint8) == ord("\n"))
                    cut = int(ends[self._lines - 1]) + 1
                block = bytes(self._pending[:cut])
                del self._pending[:cut]
                held -= block.count(b"\n")
                yield block
            if not piece:
                return

    def rest(self, block: bytes) -> BinaryIO:
        return io.BufferedReader(_Prefixed(block + bytes(self._pending), self._handle))


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of a binary handle, as one stream."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix, self._rest = memoryview(prefix), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix.nbytes:
            n = min(len(buffer), self._prefix.nbytes)
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _arrow_canonical(block: bytes, offset: int, lines: int) -> pd.DataFrame | None:
    """A block of `lines` lines as `to_canonical` reads them, numbered from offset + 1, through
    Arrow; None when the block needs the line-by-line reader (see `_canonical_chunks`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if b"x" in block or b"X" in block:  # "0x1f": hexadecimal to Arrow, not a number to pandas
        return None
    numbers = {c: pa.int64() for c in RAW_COLUMNS if c != BEHAVIOR}
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=list(RAW_COLUMNS), block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={**numbers, BEHAVIOR: pa.string()},
                null_values=[""],
                strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except pa.ArrowInvalid:
        return None
    if table.num_rows != lines:  # a blank line, which Arrow skips
        return None
    events = pd.DataFrame({SOURCE_ROW: np.arange(offset + 1, offset + table.num_rows + 1)})
    for column in ID_COLUMNS:
        values = table.column(column)
        if values.null_count and pc.max(pc.abs(values)).as_py() >= _ID_LIMIT:
            return None  # pandas reads this chunk's ids as floats, rounded
        events[column] = values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    seconds = table.column("timestamp")
    low, high = pc.min_max(seconds).values()
    if low.is_valid and max(-low.as_py(), high.as_py()) >= _SECONDS_LIMIT:
        return None
    coded = table.column(BEHAVIOR).combine_chunks().dictionary_encode()
    names = np.array([_behavior(v) for v in coded.dictionary.to_pylist()], dtype=object)
    codes = coded.indices.to_numpy(zero_copy_only=False) if len(coded) else np.array([], dtype=np.int64)
    events[BEHAVIOR] = pd.array(names[codes], dtype="string")
    stamps = pd.to_datetime(seconds.fill_null(0).to_numpy(), unit="s", utc=True)
    events[EVENT_TIMESTAMP] = stamps.where(~seconds.is_null().to_numpy(zero_copy_only=False))
    return events[[SOURCE_ROW, *EVENT_COLUMNS]]


def _behavior(value: str) -> Any:
    """One behaviour as `to_canonical` cleans it: trimmed, lower case, missing when empty."""
    cleaned = value.strip().lower()
    return cleaned if cleaned else pd.NA


def repeated_rows(batches: Callable[[], Iterable[pd.DataFrame]]) -> pd.Series:
    """The rows that repeat an earlier row field for field (EVENT_COLUMNS, nulls equal) across a
    sequence of batches read twice (`batches()` gives it afresh): indexed by the row's position in
    the whole sequence, valued with its first copy's SOURCE_ROW (its position when the batches have
    none). A repeat is found in any batch after its first copy.

    Memory: one 64-bit hash per row, then the rows whose hash occurs more than once, compared
    exactly (a hash collision is never taken for a repeat).
    """
    columns = list(EVENT_COLUMNS)
    # A categorical hashes as its values do (pandas hashes each category once, then takes codes):
    # the same hashes as the strings, without hashing every row's behaviour string.
    hashes = [
        pd.util.hash_pandas_object(b[columns].astype({BEHAVIOR: "category"}), index=False).to_numpy()
        for b in batches()
        if set(columns) <= set(b.columns)
    ]
    found = pd.Series([], dtype="Int64")
    if not hashes:
        return found
    shared = pd.Series(np.concatenate(hashes)).duplicated(keep=False).to_numpy()
    if not shared.any():
        return found
    parts, offset = [], 0
    for batch in batches():
        take = shared[offset : offset + len(batch)]
        if take.any():
            part = batch.loc[take, [c for c in (SOURCE_ROW, *columns) if c in batch.columns]]
            parts.append(part.set_axis(offset + np.flatnonzero(take)))
        offset += len(batch)
    candidates = pd.concat(parts)
    if SOURCE_ROW not in candidates:
        candidates[SOURCE_ROW] = candidates.index
    first = candidates[SOURCE_ROW].groupby([candidates[c] for c in columns], dropna=False, sort=False)
    first = first.transform("first")
    return first[candidates.duplicated(columns, keep="first")].astype("Int64")


def to_canonical(raw: pd.DataFrame) -> pd.DataFrame:
    """Parse ids as nullable integers and Unix seconds as UTC timestamps."""
    events = pd.DataFrame({SOURCE_ROW: raw[SOURCE_ROW].astype("int64")})
    for column in ID_COLUMNS:
        values = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        if not pd.api.types.is_integer_dtype(values):
            # Not a whole number in the int64 range ("3.5", "1e400"): null, which validation quarantines.
            values = values.where((values % 1 == 0) & values.abs().lt(2.0**63))
        events[column] = values.astype("Int64")
    behavior = raw[BEHAVIOR].astype("string").str.strip().str.lower()
    events[BEHAVIOR] = behavior.mask(behavior == "")
    seconds = pd.to_numeric(raw["timestamp"].str.strip(), errors="coerce")
    try:
        stamps = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce")
    except FloatingPointError:
        # pandas' vectorised path for float seconds (a column with a missing time) at times reports
        # an overflow no value causes, after native code ran in the process; its path for objects,
        # which it takes itself for times out of range, gives the same timestamps.
        stamps = pd.to_datetime(seconds.astype(object), unit="s", utc=True, errors="coerce")
    events[EVENT_TIMESTAMP] = stamps
    return events[[SOURCE_ROW, *EVENT_COLUMNS]]


def load_events(
    path: Path | str, user_id_key: str | None = None, days: Iterable[date | datetime] | None = None
) -> pd.DataFrame:
    """The canonical events of a raw CSV or of a folder's day partitions (only `days`' when
    given), user ids pseudonymised under `user_id_key` (None: the CTR_USER_ID_KEY setting; empty:
    the raw ids, as a shop would send them to the ingest service)."""
    from models.data.privacy import pseudonymise

    if user_id_key is None:
        from models.settings import get_settings

        user_id_key = get_settings().user_id_key
    events = to_canonical(read_raw_events(path, days))
    events[USER_ID] = pseudonymise(events[USER_ID], user_id_key)
    return events


def unix_seconds(timestamps: pd.Series) -> np.ndarray:
    """Timezone-aware timestamps as whole Unix seconds (int64), the unit of the raw logs."""
    return timestamps.to_numpy(dtype="datetime64[s]").astype(np.int64)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-spread 64-bit mix."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def event_ids(events: pd.DataFrame) -> np.ndarray:
    """A deterministic 64-bit id per event, from its user, item, category, behaviour and second.

    Two deliveries of the same action get the same id, which is how ingestion and the batch job
    drop duplicates. Rows must be valid (no nulls, behaviour in BEHAVIORS).
    """
    behavior = pd.Categorical(events[BEHAVIOR], categories=list(BEHAVIORS)).codes.astype(np.int64)
    return event_ids_of_columns(
        events[USER_ID].to_numpy(dtype=np.int64),
        events[ITEM_ID].to_numpy(dtype=np.int64),
        events[CATEGORY_ID].to_numpy(dtype=np.int64),
        behavior,
        unix_seconds(events[EVENT_TIMESTAMP]),
    )


def event_ids_of_columns(
    user: np.ndarray, item: np.ndarray, category: np.ndarray, behavior: np.ndarray, seconds: np.ndarray
) -> np.ndarray:
    """`event_ids` of events given as int64 columns: ids, the behaviour's index in BEHAVIORS and
    the Unix second."""
    if (behavior < 0).any():
        raise ValueError("event_ids needs behaviours from " + ", ".join(BEHAVIORS))
    h = np.full(len(user), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in (user, item, category, behavior, seconds):
            h = _mix(h ^ np.asarray(column, dtype=np.int64).view(np.uint64))
    return h.view(np.int64)
