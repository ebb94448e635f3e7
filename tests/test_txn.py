"""Optimistic updates under real thread contention, on a real server: WATCH vs Lua vs the article's code."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import redisopt
from redisopt.servers import UrlServer
from redisopt.txn import SharedCounter, TxnResult, article_watch_add, exec_replies, sequence_gaps, transact

THREADS = 8
UPDATES = 100


def _hammer(update: Callable[[], Any], threads: int = THREADS, updates: int = UPDATES) -> list[Any]:
    """Run ``update`` ``updates`` times in each of ``threads`` threads released together."""
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        try:
            start.wait()
            mine = [update() for _ in range(updates)]
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            results.extend(mine)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def counter(r: redis.Redis, ks: redisopt.KeySpace) -> SharedCounter:
    return SharedCounter(r, ks.key("counter"))


@pytest.fixture
def url_client(server: redisopt.Server) -> Iterator[redis.Redis]:
    """A client guarded like one on the user's REDIS_URL server (the same private server behind it)."""
    client = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0").client()
    yield client
    client.close()


def test_watched_updates_end_exact_and_report_their_retries(counter: SharedCounter) -> None:
    results: list[TxnResult] = _hammer(counter.add_watched)
    assert counter.read() == THREADS * UPDATES
    assert sorted(res.value for res in results) == list(range(1, THREADS * UPDATES + 1))  # each won once
    assert sum(res.retries for res in results) > 0  # there was contention, and it was reported


def test_the_lua_update_ends_exact_without_a_retry(counter: SharedCounter) -> None:
    results: list[TxnResult] = _hammer(counter.add_scripted)
    assert counter.read() == THREADS * UPDATES
    assert sorted(res.value for res in results) == list(range(1, THREADS * UPDATES + 1))
    assert {res.retries for res in results} == {0}


@pytest.mark.filterwarnings("ignore:Call WATCH from a Pipeline")
def test_the_articles_watch_loses_updates_and_the_fix_does_not(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("article")
    with redisopt.count_round_trips(r) as counted, pytest.warns(DeprecationWarning, match="Pipeline"):
        r.watch(key)  # what the article calls: redis-py only warns, and sends nothing
    assert counted.round_trips == 0
    _hammer(lambda: article_watch_add(r, key))
    lost = THREADS * UPDATES - int(r.get(key))
    assert lost > 0, "the article's WATCH guarded nothing, yet no update was lost"
    fixed = SharedCounter(r, ks.key("fixed"))
    _hammer(fixed.add_watched)
    assert fixed.read() == THREADS * UPDATES


def test_plain_read_modify_write_loses_updates(counter: SharedCounter) -> None:
    _hammer(counter.add_racy)
    assert counter.read() < THREADS * UPDATES


def test_a_watch_on_a_pooled_connection_guards_nothing_the_pipeline_does(server: redisopt.Server,
                                                                        r: redis.Redis,
                                                                        ks: redisopt.KeySpace) -> None:
    key = ks.key("balance")
    r.set(key, 100)
    client = server.client()
    try:
        client.execute_command("WATCH", key)  # WATCH on a pooled connection, back in the pool at once
        seen = int(client.get(key))
        busy = client.connection_pool.get_connection()  # another caller holds that connection now
        try:
            r.set(key, 500)  # a concurrent deposit
            pipe = client.pipeline()  # so MULTI/EXEC run on a second connection, watching nothing
            pipe.multi()
            pipe.set(key, seen - 30)
            assert pipe.execute() == [True]  # not refused: the deposit is overwritten
        finally:
            client.connection_pool.release(busy)
        assert int(r.get(key)) == 70  # 100 + 400 - 30 should be 470
        r.set(key, 100)
        deposits = [400]

        def withdraw(pipe: redis.client.Pipeline) -> int:  # the fix: read and EXEC on the WATCHing pipe
            seen = int(pipe.get(key))
            if deposits:  # the same concurrent deposit, during the first attempt
                r.incrby(key, deposits.pop())
            pipe.multi()
            pipe.set(key, seen - 30)
            return seen - 30

        assert transact(r, withdraw, key).retries == 1
        assert int(r.get(key)) == 470
    finally:
        client.close()


def test_a_watch_left_on_a_pooled_connection_breaks_a_later_transaction(server: redisopt.Server,
                                                                         r: redis.Redis,
                                                                         ks: redisopt.KeySpace) -> None:
    client = server.client(max_connections=1)  # the next command gets the same connection back
    try:
        client.execute_command("WATCH", ks.key("watched"))  # the article's WATCH, through the pool
        r.set(ks.key("watched"), "changed by someone else")
        with pytest.raises(redis.exceptions.WatchError):
            client.pipeline(transaction=True).set(ks.key("unrelated"), 1).execute()
        assert r.get(ks.key("unrelated")) is None
    finally:
        client.close()


def test_retries_are_bounded_and_the_error_says_so(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    key = ks.key("contended")
    calls = 0

    def always_loses(pipe: redis.client.Pipeline) -> None:
        nonlocal calls
        calls += 1
        r.incr(key)  # another connection changes the watched key before every EXEC
        pipe.multi()
        pipe.set(ks.key("never"), 1)

    with pytest.raises(redisopt.RetryLimitExceeded, match=r"gave up after 4 attempts") as info:
        transact(r, always_loses, key, max_retries=3)
    assert isinstance(info.value, redisopt.RedisoptError)
    assert info.value.keys == (key,) and info.value.attempts == 4 == calls
    assert r.get(ks.key("never")) is None  # no refused EXEC wrote anything
    calls = 0
    with pytest.raises(redisopt.RetryLimitExceeded):
        transact(r, always_loses, key, max_retries=0, backoff=0.001)
    assert calls == 1


def test_one_conflict_is_one_retry(counter: SharedCounter, r: redis.Redis) -> None:
    attempts = 0

    def update(pipe: redis.client.Pipeline) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            r.set(counter.key, 41)  # someone else writes between our WATCH and EXEC, once
        return counter.do_update(pipe, 1)

    result = transact(r, update, counter.key)
    assert (result.retries, result.attempts, result.value, result.replies) == (1, 2, 42, [True])
    assert counter.read() == 42


@pytest.mark.parametrize("bad", [{"max_retries": -1}, {"max_retries": None}, {"max_retries": True},
                                 {"max_retries": 1.5}, {"backoff": -0.1}, {"backoff": float("nan")}])
def test_bad_retry_settings_are_refused_before_anything_is_sent(counter: SharedCounter, r: redis.Redis,
                                                                 bad: dict[str, Any]) -> None:
    with redisopt.count_round_trips(r) as counted, pytest.raises(ValueError):
        counter.add_watched(**bad)
    assert counted.round_trips == 0
    with pytest.raises(ValueError, match="at least one key"):
        transact(r, lambda pipe: None)


def test_round_trips_watch_three_lua_one(counter: SharedCounter, r: redis.Redis) -> None:
    counter.add_scripted()  # loads the script (NOSCRIPT + SCRIPT LOAD) outside the count
    with redisopt.count_round_trips(r) as watched:
        counter.add_watched()
    with redisopt.count_round_trips(r) as scripted:
        counter.add_scripted()
    assert watched.round_trips == 3  # WATCH, GET, then MULTI+SET+EXEC in one write
    assert scripted.round_trips == 1
    assert counter.read() == 3


@pytest.mark.filterwarnings("ignore:Call WATCH from a Pipeline")
def test_everything_passes_the_guard_of_a_url_server(url_client: redis.Redis, ks: redisopt.KeySpace) -> None:
    guarded = SharedCounter(url_client, ks.key("guarded"))
    assert guarded.add_scripted(5).value == 5
    assert guarded.add_watched(2).value == 7
    assert article_watch_add(url_client, guarded.key) == 8
    with pytest.raises(redisopt.DestructiveCommandError):
        url_client.flushall()


def test_exec_does_not_roll_back_a_failed_command(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    def build(pipe: redis.client.Pipeline) -> None:
        pipe.set(ks.key("a"), "string")
        pipe.lpush(ks.key("a"), "x")  # WRONGTYPE, found only when EXEC runs it
        pipe.set(ks.key("b"), "after")

    replies = exec_replies(r, build)
    assert replies[0] is True and replies[2] is True
    assert isinstance(replies[1], redis.exceptions.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert (r.get(ks.key("a")), r.get(ks.key("b"))) == ("string", "after")  # nothing undone


def test_a_pipeline_interleaves_with_other_clients_multi_exec_does_not(server: redisopt.Server,
                                                                        r: redis.Redis,
                                                                        ks: redisopt.KeySpace) -> None:
    key, stop = ks.key("seq"), threading.Event()
    other = server.client()

    def writer() -> None:
        while not stop.is_set():
            other.incr(key)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        gaps = {}
        for transaction in (True, False):
            found = 0
            for _ in range(20):  # a few tries: the writer must get its commands in between
                found = sequence_gaps(exec_replies(r, lambda p: [p.incr(key) for _ in range(20_000)],
                                                   transaction=transaction))
                if found or transaction:
                    break
            gaps[transaction] = found
    finally:
        stop.set()
        thread.join()
        other.close()
    assert gaps[True] == 0
    assert gaps[False] > 0
