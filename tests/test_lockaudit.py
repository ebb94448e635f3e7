"""Lock keys without a TTL: the article's cleanup (mistake 4) against the report and the repair."""

from __future__ import annotations

import pytest
import redis

import redisopt


def _locks(r: redis.Redis, ks: redisopt.KeySpace, with_ttl: int, without: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(with_ttl):
        pipe.set(ks.key("lock", i), "holder", nx=True, ex=300)
    for i in range(without):
        pipe.set(ks.key("lock", "orphan", i), "dead")
    pipe.set(ks.key("other"), "no ttl, outside the pattern")
    pipe.execute()


def test_article_cleanup_deletes_ttl_less_locks_one_round_trip_per_key(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    _locks(r, ks, 150, 3)
    with redisopt.count_round_trips(r) as rt:
        deleted = redisopt.article_cleanup_expired_locks(r, ks.pattern("lock"))
    assert deleted == 3
    assert rt.round_trips >= 153 + 3  # a TTL per key and a DEL per orphan
    assert redisopt.locks_without_ttl(r, ks.pattern("lock")) == []
    assert r.exists(ks.key("lock", 0), ks.key("other")) == 2


def test_article_cleanup_takes_a_live_holders_lock_between_setnx_and_expire(
    r: redis.Redis, ks: redisopt.KeySpace
) -> None:
    lock = ks.key("lock", "job")
    assert r.setnx(lock, "worker-a")
    assert redisopt.article_cleanup_expired_locks(r, ks.pattern("lock")) == 1
    assert not r.expire(lock, 60)  # worker-a's second step finds no key
    assert r.set(lock, "worker-b", nx=True, ex=60)  # and worker-b takes the lock worker-a believes it holds


def test_locks_without_ttl_reports_and_deletes_nothing(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    _locks(r, ks, 2_500, 4)
    size = r.dbsize()
    with redisopt.count_round_trips(r) as scan_only:
        list(redisopt.scan_keys(r, ks.pattern("lock")))
    with redisopt.count_round_trips(r) as rt:
        found = redisopt.locks_without_ttl(r, ks.pattern("lock"))
    assert sorted(found) == sorted(ks.key("lock", "orphan", i) for i in range(4))
    assert r.dbsize() == size
    assert rt.round_trips <= 2 * scan_only.round_trips  # batched TTLs, not one round trip per key


def test_repair_gives_a_ttl_only_where_there_is_none(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    _locks(r, ks, 50, 2)
    r.expire(ks.key("lock", 0), 30)
    before = r.pttl(ks.key("lock", 0))
    repaired = redisopt.repair_lock_ttls(r, ks.pattern("lock"), ttl=120)
    assert sorted(repaired) == [ks.key("lock", "orphan", 0), ks.key("lock", "orphan", 1)]
    assert 0 < r.pttl(ks.key("lock", "orphan", 0)) <= 120_000
    assert r.get(ks.key("lock", "orphan", 0)) == "dead"  # repaired, not deleted
    assert r.pttl(ks.key("lock", 0)) <= before  # an existing TTL is not reset
    assert r.ttl(ks.key("other")) == -1  # outside the pattern
    assert redisopt.repair_lock_ttls(r, ks.pattern("lock"), ttl=120) == []


def test_repair_refuses_a_ttl_that_is_not_positive(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    for ttl in (0, -1):
        with pytest.raises(ValueError):
            redisopt.repair_lock_ttls(r, ks.pattern("lock"), ttl=ttl)
