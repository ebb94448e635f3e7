"""StreamQueue and its asyncio twin on a real server: the behaviour tests of tests/test_reliable.py
(imported here, run with ``kind`` = "stream"), then what only a stream has: the consumer group
made idempotently with MKSTREAM, acked entries deleted (the trimming policy), XAUTOCLAIM counts."""

from __future__ import annotations

import time

import pytest
import redis

import redisopt
from tests.test_reliable import (  # noqa: F401  (the shared behaviour tests and their fixtures)
    flavour,
    make,
    test_a_blocking_claim_outlasts_the_socket_timeout,
    test_a_stalled_job_is_taken_over_and_its_old_holder_cannot_ack_it,
    test_a_stalled_job_past_max_deliveries_is_dead_lettered_by_claim_too,
    test_bad_input_is_refused_before_anything_is_sent,
    test_claim_many_is_one_round_trip,
    test_claim_timeouts_none_zero_and_t,
    test_dead_letters_keep_the_order_of_the_jobs,
    test_every_key_shares_one_cluster_slot,
    test_every_verb_passes_the_guard_of_a_users_server,
    test_put_claim_ack_delivers_every_item_once_in_order,
    test_reap_returns_overdue_jobs_then_dead_letters_after_max_deliveries,
    test_twins_read_each_others_items,
)


@pytest.fixture
def kind() -> str:
    return "stream"


def test_the_group_is_made_once_with_mkstream_and_sees_items_put_before_it(r: redis.Redis,
                                                                          ks: redisopt.KeySpace) -> None:
    q = redisopt.StreamQueue(r, "early", "g1", keyspace=ks)
    q.put_many(["before the group"])  # XADD makes the stream; no group yet
    assert r.exists(q.key) == 1
    q.ensure_group()
    q.ensure_group()  # BUSYGROUP is not an error
    other = redisopt.StreamQueue(r, "early", "g1", keyspace=ks)
    job = other.claim("c", 0)
    assert job is not None and job.item == "before the group"
    assert [g["name"] for g in r.xinfo_groups(q.key)] == ["g1"]
    q.clear()  # stream and group gone: the next call makes them again
    q.put("after clear")
    job = q.claim("c", 0)
    assert job is not None and job.item == "after clear"


def test_acked_entries_are_deleted_so_the_stream_holds_only_the_backlog(r: redis.Redis,
                                                                      ks: redisopt.KeySpace) -> None:
    q = redisopt.StreamQueue(r, "trim", "g", keyspace=ks)
    q.put_many(range(1000))
    jobs = q.claim_many("c", 600)
    assert r.xlen(q.key) == 1000 and len(q) == 400 and q.in_flight() == 600
    assert all(q.ack(j) for j in jobs)
    assert r.xlen(q.key) == 400 and q.in_flight() == 0  # XACK + XDEL: no history kept, nothing unread lost


def test_the_pending_entries_list_counts_deliveries(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.StreamQueue(r, "counts", "g", visibility=0.1, keyspace=ks)
    entry = q.put("job")
    assert q.claim("a", 0).deliveries == 1
    time.sleep(0.15)
    job = q.claim("b", 0)  # XAUTOCLAIM
    assert job.id == entry and job.deliveries == 2
    pending = r.xpending_range(q.key, "g", "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [("b", 2)]
    time.sleep(0.15)
    assert q.reap() == 1  # requeued as a new entry carrying n=2
    again = q.claim("c", 0)
    assert again.id != entry and again.item == "job" and again.deliveries == 3


def test_reap_forgets_consumers_that_hold_nothing(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.StreamQueue(r, "names", "g", visibility=0.1, keyspace=ks)
    q.put_many(["a", "b", "c"])
    for name in ("gone-1", "gone-2"):
        q.ack(q.claim(name, 0))
    q.claim("holder", 0)  # holds "c"
    time.sleep(0.15)
    assert q.reap() == 1  # "c" requeued; then no consumer holds anything, all idle
    assert r.xinfo_consumers(q.key, "g") == []
    job = q.claim("fresh", 0)  # a consumer is made again by its read
    assert job is not None and job.item == "c" and [c["name"] for c in r.xinfo_consumers(q.key, "g")] == ["fresh"]
