from pathlib import Path

import pandas as pd

from feature_repo.contract import EVENT_COLUMNS
from models.data.events import SOURCE_ROW, load_events


def test_every_line_is_kept_and_bad_values_become_nulls(tmp_path: Path):
    raw = tmp_path / "events.csv"
    raw.write_text(
        "1,10,100,pv,1511658000\n"
        "abc,11,100,cart,1511658001\n"  # id that is not a number
        "2,12,101,PV ,not-a-time\n"  # behaviour in other case, broken timestamp
        "3,13,102,buy,1511658002,extra\n"  # a field too many
    )
    events = load_events(raw)
    assert list(events.columns) == [SOURCE_ROW, *EVENT_COLUMNS]
    assert events[SOURCE_ROW].tolist() == [1, 2, 3, 4]
    assert pd.isna(events.loc[1, "user_id"])
    assert events.loc[2, "behavior"] == "pv" and pd.isna(events.loc[2, "event_timestamp"])
    assert pd.isna(events.loc[3, "event_timestamp"])
    assert events.loc[0, "event_timestamp"] == pd.Timestamp("2017-11-26 01:00:00", tz="UTC")


def test_gzip_sample_matches_the_shared_file():
    from models.settings import PROJECT_ROOT

    sample = load_events(PROJECT_ROOT / "data/sample/userbehavior_user_slice.csv.gz")
    assert len(sample) == 84287
    assert sample["user_id"].nunique() == 814


_ODD_LINES = [
    b"abc,11,100,cart,1511658001",  # an id that is not a number
    b"2,12,101, PV ,not-a-time",  # behaviour padded and in other case, a broken time
    b"3,13,102,buy,1511658002,extra",  # a field too many
    b"4,14,103,fav",  # a field short
    b"0x1f,15,104,pv,1511658003",  # hexadecimal: not a number
    b"5,16,105,pv,1511658004.5",  # a time with a fraction of a second
    b"6,17,106,p\xffv,1511658005",  # bytes that are not UTF-8
    b"99999999999999999999,18,107,pv,1511658006",  # past int64
    b",19,108,,",  # empty fields
    b"7,20,109,pv,99999999999",  # a time past what a timestamp holds
    b" 8 ,21,110,\tcart,1511658007 ",  # padded numbers
    b"9,9007199254740993,111,pv,1511658008",  # an id past 2**53
    b'"10",22,112,pv,1511658009',  # quotes are characters, not quoting
]


def _streamed(path: Path, chunk_rows: int) -> list[pd.DataFrame]:
    from models.data.events import iter_events

    return [chunk for _, chunk in iter_events(path, "", chunk_rows)]


def test_streamed_chunks_read_every_line_as_the_whole_file_reader_does(tmp_path: Path):
    """Blocks of good lines take the fast parser, blocks with any odd line the line-by-line one;
    either way each line gets the same values and number, and every line is kept."""
    good = [
        f"{i},{1000 + i},{i % 7},{('pv', 'cart', 'fav', 'buy')[i % 4]},{1511658000 + i}".encode()
        for i in range(40)
    ]
    for odd in _ODD_LINES:
        lines = good[:17] + [odd] + good[17:]
        raw = tmp_path / "events.csv"
        raw.write_bytes(b"\n".join(lines) + b"\n")
        chunks = _streamed(raw, 8)
        assert [len(c) for c in chunks] == [8] * 5 + [1], odd
        streamed = pd.concat(chunks, ignore_index=True)
        pd.testing.assert_frame_equal(streamed, load_events(raw, user_id_key=""), obj=repr(odd))


def test_blank_lines_and_carriage_returns_are_read_as_the_whole_file_reader_reads_them(tmp_path: Path):
    good = [f"{i},{1000 + i},3,pv,{1511658000 + i}".encode() for i in range(30)]
    for lines, end in (
        (good[:11] + [b""] + good[11:], b"\n"),  # a blank line: skipped, not numbered
        (good[:11] + [b"  \t"] + good[11:], b"\n"),  # blank but for spaces: skipped too
        (good, b"\r\n"),
        (good[:20] + [b"1,2,3,pv,1511658000\r9,9,9,buy,1511658001"] + good[20:], b"\n"),
    ):
        raw = tmp_path / "events.csv"
        raw.write_bytes(end.join(lines) + end)
        chunks = _streamed(raw, 8)
        assert all(len(c) == 8 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 8
        streamed = pd.concat(chunks, ignore_index=True)
        pd.testing.assert_frame_equal(streamed, load_events(raw, user_id_key=""))


def test_an_empty_file_and_a_last_line_without_newline(tmp_path: Path):
    raw = tmp_path / "events.csv"
    raw.write_bytes(b"")
    (empty,) = _streamed(raw, 8)
    assert empty.empty and list(empty.columns) == [SOURCE_ROW, *EVENT_COLUMNS]
    raw.write_bytes(b"1,2,3,pv,1511658000\n4,5,6,buy,1511658001")
    (chunk,) = _streamed(raw, 8)
    pd.testing.assert_frame_equal(chunk, load_events(raw, user_id_key=""))
