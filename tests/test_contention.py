"""Real threads on a real server: hammer, contention_sweep, the staged interleaving and raw sessions (5장)."""

from __future__ import annotations

import threading

import pytest
import redis

import redisopt
from redisopt.contention import Hammered, contention_sweep, gaps_under_load, hammer, interleaving, on_one_connection
from redisopt.txn import SharedCounter, sequence_gaps


def test_a_plain_pipeline_lets_the_other_client_in_every_time(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("seq")
    for _ in range(3):  # staged, not timed: the same outcome on every run
        replies = interleaving(r, key, transaction=False, others=4)
        assert replies[0] == 1 and replies[3] == 6  # the other client's 4 INCRs landed in between
        assert replies[2] == (f"{key}:wake", "done") or list(replies[2]) == [f"{key}:wake", "done"]
        assert sequence_gaps([replies[0], replies[3]]) == 1
        assert int(r.get(key)) == 6


def test_multi_exec_runs_its_block_with_nothing_in_between(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("seq")
    for _ in range(3):
        replies = interleaving(r, key, transaction=True, others=4)
        assert replies == [1, 1, None, 2]  # BLPOP inside MULTI does not block
        assert int(r.get(key)) == 6  # the other client's INCRs came after EXEC
    assert r.exists(f"{key}:go", f"{key}:wake") == 0


def test_hammer_releases_threads_together_and_collects_results(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("incr")
    seen: set[str] = set()

    def update() -> int:
        seen.add(threading.current_thread().name)
        return int(r.incr(key))

    result = hammer(update, threads=4, updates=50)
    assert isinstance(result, Hammered)
    assert result.done == 200 and result.gave_up == [] and result.threads == 4
    assert sorted(result.results) == list(range(1, 201))
    assert len(seen) == 4 and result.seconds > 0 and result.per_s > 0
    assert result.retries == 0


def test_hammer_collects_bounded_give_ups_and_raises_anything_else(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    counter = SharedCounter(r, ks.key("tight"))
    result = hammer(lambda: counter.add_watched(max_retries=0), threads=8, updates=30)
    assert result.done + len(result.gave_up) == 240
    assert all(isinstance(exc, redisopt.RetryLimitExceeded) for exc in result.gave_up)
    assert counter.read() == result.done  # a refused EXEC wrote nothing

    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        hammer(broken, threads=2, updates=1)
    with pytest.raises(ValueError, match="threads"):
        hammer(broken, threads=0, updates=1)


def test_contention_sweep_reports_exact_counts_and_retries(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    counter = SharedCounter(r, ks.key("sweep"))
    df = contention_sweep({"WATCH": counter.add_watched, "GET+SET": counter.add_racy},
                          key=counter.key, client=r, threads=[1, 4], total=200, repeat=2)
    assert len(df) == 2 * 2 * 2
    assert set(df.columns) >= {"case", "threads", "run", "seconds", "updates_per_s", "retries", "done",
                               "gave_up", "final", "exact"}
    watch = df[df.case == "WATCH"]
    assert watch.exact.all() and (watch.done == 200).all()
    assert watch[watch.threads == 4].retries.sum() > 0
    racy = df[(df.case == "GET+SET") & (df.threads == 4)]
    assert not racy.exact.any()  # 4 threads doing GET then SET lose updates


def test_a_session_shows_queued_replies_and_no_rollback(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    a, b = ks.key("a"), ks.key("b")
    df = on_one_connection(r, ["MULTI"], ["SET", a, "v"], ["LPUSH", a, "x"], ["SET", b, "after"], ["EXEC"])
    assert list(df.reply[:4]) == ["OK", "QUEUED", "QUEUED", "QUEUED"]
    executed = df.reply[4]
    assert executed[0] == "OK" and executed[1].startswith("(error) WRONGTYPE") and executed[2] == "OK"
    assert (r.get(a), r.get(b)) == ("v", "after")


def test_a_queueing_error_aborts_the_whole_transaction(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    a = ks.key("a")
    r.set(a, "before")
    df = on_one_connection(r, ["MULTI"], ["SET", a, "changed"], ["SET", a], ["EXEC"], ["GET", a])
    assert df.reply[2].startswith("(error) wrong number of arguments")
    assert df.reply[3].startswith("(error) EXECABORT")
    assert df.reply[4] == "before"


def test_a_session_stages_another_writer_and_leaves_no_watch_behind(server: redisopt.Server,
                                                                    ks: redisopt.KeySpace) -> None:
    client = server.client(max_connections=1)  # the pool's one connection serves the next caller too
    other = server.client()
    try:
        key = ks.key("w")
        other.set(key, 10)
        df = on_one_connection(client, ["WATCH", key], ["GET", key], (other, "SET", key, 11),
                               ["MULTI"], ["SET", key, 11], ["EXEC"])
        assert df.command[2].startswith("(other connection) SET")
        assert df.reply[5] is None  # EXEC refused: the watched key changed
        on_one_connection(client, ["WATCH", key])  # left watching: the session closes the connection
        other.set(key, 12)
        assert client.pipeline(transaction=True).set(ks.key("unrelated"), 1).execute() == [True]
    finally:
        client.close()
        other.close()


def test_under_load_multi_exec_shows_no_gap(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    assert [gaps_under_load(r, ks.key("load"), transaction=True) for _ in range(3)] == [0, 0, 0]
    gaps = [gaps_under_load(r, ks.key("load"), transaction=False) for _ in range(10)]
    assert sum(g > 0 for g in gaps) >= 3  # a plain pipeline is read in pieces and the other gets in between
