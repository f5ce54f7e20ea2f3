"""The soak benchmark's bar is read from its own records: when the answers switched to a moved
champion, and how much a service's memory grew after warm-up. Both on records built for the case."""

from benchmarks.catalogue_serving import ReplayedStream
from benchmarks.soak import move_times, rss_growth, switch_seconds


def test_a_switch_counts_until_the_last_old_answer_after_the_move():
    # the alias moves to "2" at 10 s and back to "1" at 20 s; answers every second
    answers = [(t, "1") for t in range(0, 13)] + [(t, "2") for t in range(13, 20)]
    answers += [(20, "2"), (21, "2")] + [(t, "1") for t in range(22, 30)]
    assert switch_seconds(answers, [(10.0, "2"), (20.0, "1")]) == [3.0, 2.0]


def test_a_move_the_service_never_followed_has_no_switch():
    answers = [(t, "1") for t in range(30)]
    assert switch_seconds(answers, [(10.0, "2")]) == [None]


def test_an_old_answer_after_new_ones_delays_the_switch():
    answers = [(10, "2"), (11, "1"), (12, "2")]  # one worker had not reloaded yet
    assert switch_seconds(answers, [(10.0, "2")]) == [2.0]


def test_no_move_comes_too_late_to_be_followed_within_the_load():
    # 30 minutes, a move every 5: the one at 1,800 s would come as the load ends
    assert move_times(1800, 300, 15) == [300, 600, 900, 1200, 1500]
    assert move_times(1816, 300, 15) == [300, 600, 900, 1200, 1500, 1800]
    assert move_times(100, 300, 15) == []


def test_rss_growth_is_the_peak_after_warm_up_against_the_minute_after_it():
    mib = 2**20
    samples = [{"t_s": t, "ranker": (500 if t < 300 else 1000) * mib} for t in range(0, 300, 10)]
    samples += [{"t_s": t, "ranker": 1000 * mib} for t in range(300, 360, 10)]
    samples += [{"t_s": 400, "ranker": 1080 * mib}, {"t_s": 410, "ranker": 1050 * mib}]
    assert rss_growth(samples, "ranker", 300) == {
        "rss_warm_mib": 1000,
        "rss_peak_mib": 1080,
        "rss_growth": 0.08,
    }


def test_the_replayed_stream_moves_each_round_after_the_last():
    stream = ReplayedStream(n=10**6, batch=1000)
    first, again = stream[0]["events"], stream[stream.per_round]["events"]
    assert [e["item_id"] for e in first] == [e["item_id"] for e in again]
    last_of_round = stream[stream.per_round - 1]["events"][-1]["event_timestamp"]
    assert again[0]["event_timestamp"] > last_of_round
    assert again[0]["event_timestamp"] - first[0]["event_timestamp"] == stream.span.total_seconds()
