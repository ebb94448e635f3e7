"""The cache chapter's experiments: the article's guard fails as the notebook says, the bursts count right."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

import redisopt
from redisopt import Cache, SQLiteStore, WriteBehindFlusher, cachelab


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    with SQLiteStore() as s:
        yield s


def test_together_times_every_thread_and_reraises_an_error() -> None:
    runs = cachelab.together(5, lambda: time.sleep(0.01) or "ok")
    assert len(runs) == 5 and all(v == "ok" and s >= 0.01 for s, v in runs)
    with pytest.raises(ZeroDivisionError):
        cachelab.together(3, lambda: 1 / 0)


def test_the_article_guard_hands_its_waiters_none(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """Mistake 10: a load slower than the 0.1 s nap leaves every waiter with None; one load only."""
    loads: list[int] = []

    def slow() -> str:
        loads.append(1)
        time.sleep(0.3)
        return "queued"

    runs = cachelab.together(10, lambda: cachelab.article_get_with_lock(r, ks.key("v"), ks.key("lock"), slow))
    values = [v for _, v in runs]
    assert len(loads) == 1 and values.count("queued") == 1 and values.count(None) == 9
    assert r.exists(ks.key("lock")) == 0  # its finally deleted the lock


def test_the_article_guard_fails_on_a_bool_and_a_lock_without_ttl_starves_readers(r: redis.Redis,
                                                                                   ks: redisopt.KeySpace) -> None:
    """Mistake 11: SETEX of a bool raises DataError. Mistake 1: a lock left by a crash between SETNX
    and EXPIRE has no TTL, so every later reader naps and gets None, and nobody ever loads."""
    with pytest.raises(redis.exceptions.DataError):
        cachelab.article_get_with_lock(r, ks.key("flag"), ks.key("lock", "flag"), lambda: True)
    r.setnx(ks.key("lock", "v"), 1)  # the crashed process's half of the article's lock

    def never() -> str:
        raise AssertionError("nobody should get to load")

    assert [cachelab.article_get_with_lock(r, ks.key("v"), ks.key("lock", "v"), never) for _ in range(2)] == [None] * 2
    assert r.ttl(ks.key("lock", "v")) == -1


@pytest.mark.parametrize(("stampede", "queries"), [("none", 20), ("lock", 1), ("xfetch", 1)])
def test_a_burst_counts_the_store_queries_of_each_guard(r: redis.Redis, ks: redisopt.KeySpace, store: SQLiteStore,
                                                        stampede: str, queries: int) -> None:
    store.delay = 0.2  # long enough that all 20 threads miss before the first load is stored
    store.put("hot", {"v": 1})
    row = cachelab.stampede_burst(r, ks.key(stampede), stampede, store, n=20, db_connections=4)
    assert row["requests"] == 20 and row["got_none"] == 0 and row["db_queries"] == queries
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_an_expiry_timeline_records_every_load_and_request(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    tl = cachelab.expiry_timeline(r, ks.key("t"), "lock", seconds=0.5, threads=4, ttl=0.15, delay=0.03)
    assert len(tl.loads) == tl.stats["loads"] >= 2  # the warm-up load is not counted; >= 2 expiries in 0.5 s
    assert len(tl.requests) == tl.stats["hits"] + tl.stats["misses"]
    bins = tl.per_bin()
    assert bins["db_loads"].sum() == len(tl.loads) and (tl.loads["t"] >= 0).all()
    assert r.exists(*Cache(r, ks.key("t"))._all_keys("hot")) == 0  # invalidated at the end


def test_the_article_pattern_invalidation_and_the_fix_remove_the_same_keys(r: redis.Redis,
                                                                          ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    for i in range(30):
        cache.set(f"worker:7:{i}", i)
        cache.set(f"worker:8:{i}", i)
    cache.set("worker:77:0", "keep")
    assert cachelab.article_invalidate_pattern(r, cache.value_key("worker:7:*")) == 30
    assert cache.invalidate_pattern("worker:8:*") == 30
    assert cache.get("worker:77:0") == "keep" and cachelab.article_invalidate_pattern(r, "nothing:like:this:*") == 0


def test_a_spawned_flusher_killed_mid_batch_loses_nothing(r: redis.Redis, ks: redisopt.KeySpace,
                                                          store: SQLiteStore) -> None:
    cache = Cache(r, ks.key("wb"), store=store)
    for i in range(30):
        cache.write_behind(f"k{i}", i)
    proc = cachelab.spawn_flusher(cache, consumer="c1", batch=5, delay=30)
    try:
        rescue = WriteBehindFlusher(r, cache.prefix, store, consumer="c1", batch=5)
        cachelab.wait_for(lambda: rescue.pending() == 5 or proc.poll() is not None, "the child to read a batch")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert cachelab.kill(proc) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
    assert store.items() == {} and rescue.pending() == 5
    assert rescue.drain() == 30 and store.items() == {f"k{i}": i for i in range(30)}


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="the moon"):
        cachelab.wait_for(lambda: False, "the moon", timeout=0.05)
