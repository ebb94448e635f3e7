"""WorkQueue on a real server: FIFO without loss, bounded bulk commands, pipelines, timeouts, the mistake-7 Lua."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisopt
from redisopt.queue import CHUNK, WINDOW, queue_key, wait_slices
from redisopt.servers import UrlServer

ITEMS = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner | st.none(), max_size=5) | st.dictionaries(st.text(max_size=6), inner | st.none(),
                                                                            max_size=5),
    max_leaves=20,
)


def drain(q: redisopt.WorkQueue) -> list[Any]:
    out = []
    while (item := q.get(0)) is not None:
        out.append(item)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(ITEMS, max_size=12) | ITEMS.map(lambda x: [x]), max_size=6),
    codec=st.sampled_from(["orjson", "json", "msgpack", "orjson+zlib"]),
    chunk=st.integers(1, 4),
    window=st.integers(1, 3),
)
def test_fifo_and_no_loss(r: redis.Redis, ks: redisopt.KeySpace, batches: list[list[Any]], codec: str,
                          chunk: int, window: int) -> None:
    """Small chunk and window sizes make every batch cross command and round-trip boundaries."""
    q = redisopt.WorkQueue(r, "prop", codec, keyspace=ks, chunk=chunk, window=window)
    q.clear()
    expected = []
    for batch in batches:
        if len(batch) == 1:
            q.put(batch[0])
        else:
            assert q.put_many(batch) == len(batch)
        expected += batch
    assert len(q) == len(expected)
    assert repr(drain(q)) == repr(expected)
    assert len(q) == 0


@pytest.mark.parametrize("codec", ["orjson", "msgpack", "json+zlib"])
def test_edge_payloads(r: redis.Redis, ks: redisopt.KeySpace, codec: str) -> None:
    """Empty strings, unicode, deep nesting and ~1 MB payloads, on a decode_responses client."""
    assert r.connection_pool.connection_kwargs["decode_responses"]  # replies are read raw anyway
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"d": [deep]}
    items = ["", " ", "한국어 🚀 \u0000", False, 0, [], {}, deep, "x" * 1_000_000,
             {"blob": ["é" * 500_000, list(range(1000))]}]
    q = redisopt.WorkQueue(r, "edge", codec, keyspace=ks)
    q.put_many(items)
    q.put("")
    assert drain(q) == [*items, ""]


def test_a_100k_batch_arrives_whole_and_in_order(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.WorkQueue(r, "big", keyspace=ks)
    n = 100_000
    with redisopt.count_round_trips(r) as rt:
        assert q.put_many({"i": i} for i in range(n)) == n  # a generator: never materialised whole
    assert rt.commands == math.ceil(n / CHUNK)
    assert rt.round_trips == math.ceil(n / (CHUNK * WINDOW))
    assert len(q) == n
    raw = r.execute_command("LRANGE", q.key, 0, -1, **{redis.client.NEVER_DECODE: True})
    assert [q.codec.decode(p)["i"] for p in raw] == list(range(n))
    assert q.get(0) == {"i": 0}


@pytest.mark.parametrize(("n", "round_trips"), [(1, 1), (999, 1), (10_000, 1), (10_001, 2), (25_000, 3)])
def test_put_many_round_trips_and_commands(r: redis.Redis, ks: redisopt.KeySpace, n: int, round_trips: int) -> None:
    q = redisopt.WorkQueue(r, "rt", keyspace=ks)
    with redisopt.count_round_trips(r) as rt:
        q.put_many(range(1, n + 1))
    assert (rt.round_trips, rt.commands) == (round_trips, math.ceil(n / CHUNK))
    with redisopt.count_round_trips(r) as rt:
        assert q.put_many([]) == 0
    assert rt.round_trips == 0


def test_put_many_joins_a_callers_multi_pipeline(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.WorkQueue(r, "multi", keyspace=ks)
    with redisopt.count_round_trips(r) as rt:
        pipe = r.pipeline(transaction=True)
        pipe.set(ks.key("flag"), "queued")
        assert q.put_many(range(1, 2_501), pipeline=pipe) == 2_500
        q.put("last", pipeline=pipe)
        assert len(pipe.command_stack) == 1 + 3 + 1
        assert rt.round_trips == 0 and r.exists(ks.key("flag")) == 0  # not executed by the queue
        replies = pipe.execute()
    assert rt.round_trips == 1 + 1  # the EXEC round trip, plus the EXISTS above
    assert rt.commands == 1 + (1 + 1 + 3 + 1 + 1)  # EXISTS; MULTI SET 3×RPUSH RPUSH EXEC
    assert replies[-1] == 2_501 and len(q) == 2_501
    assert drain(q) == [*range(1, 2_501), "last"]


@pytest.mark.parametrize("bad_at", [0, 5, 1_500])
def test_a_bad_item_raises_before_anything_is_sent(r: redis.Redis, ks: redisopt.KeySpace, bad_at: int) -> None:
    q = redisopt.WorkQueue(r, "bad", keyspace=ks)
    items: list[Any] = list(range(2_000))
    items[bad_at] = {"when": {1, 2}}
    with redisopt.count_round_trips(r) as rt, pytest.raises(TypeError, match="set") as info:
        q.put_many(items)
    assert rt.round_trips == 0
    assert (info.value.index, info.value.sent) == (bad_at, 0)
    with redisopt.count_round_trips(r) as rt, pytest.raises(TypeError, match="Opaque|object"):
        q.put(object())
    assert rt.round_trips == 0
    pipe = r.pipeline()
    with pytest.raises(TypeError):
        q.put_many(items, pipeline=pipe)
    assert pipe.command_stack == []  # the caller's pipeline is left untouched
    assert len(q) == 0


def test_a_bad_item_in_a_later_window_sends_nothing_either(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.WorkQueue(r, "later", keyspace=ks, chunk=10, window=2)
    items: list[Any] = list(range(50))
    items[45] = b"bytes are not JSON"
    with redisopt.count_round_trips(r) as rt, pytest.raises(TypeError, match="bytes") as info:
        q.put_many(items)
    assert (info.value.index, info.value.sent, rt.round_trips) == (45, 0, 0)
    assert len(q) == 0


@pytest.mark.parametrize("codec", ["orjson", "json", "msgpack"])
def test_none_is_not_an_item(r: redis.Redis, ks: redisopt.KeySpace, codec: str) -> None:
    q = redisopt.WorkQueue(r, "none", codec, keyspace=ks)
    with redisopt.count_round_trips(r) as rt:
        with pytest.raises(TypeError, match="None"):
            q.put(None)
        with pytest.raises(TypeError, match="item 3 of the batch"):
            q.put_many([1, 2, 3, None])
    assert rt.round_trips == 0
    q.put([None])  # None inside an item is a value like any other
    assert q.get(0) == [None]


def test_get_zero_does_not_wait(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.WorkQueue(r, "zero", keyspace=ks)
    with redisopt.count_round_trips(r) as rt:
        assert q.get(0) is None
    assert (rt.round_trips, rt.commands) == (1, 1)
    q.put(False)
    assert q.get(0) is False  # a falsy item is not a timeout


def test_get_with_a_timeout_waits_at_least_that_long(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.WorkQueue(r, "small", keyspace=ks)
    for timeout in (0.0005, 0.05, 0.3):
        started = time.monotonic()
        assert q.get(timeout) is None
        assert time.monotonic() - started >= timeout
    with pytest.raises(ValueError, match="timeout"):
        q.get(-1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(math.nan)


def test_blocking_get_outlasts_the_socket_timeout(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    """Waits longer than redis-py's socket timeout neither raise TimeoutError nor return early."""
    client = server.client(socket_timeout=0.4)
    try:
        q = redisopt.WorkQueue(client, "slices", keyspace=ks)
        started = time.monotonic()
        assert q.get(1.0) is None
        assert time.monotonic() - started >= 1.0
        putter = threading.Timer(1.0, lambda: redisopt.WorkQueue(client, "slices", keyspace=ks).put({"late": True}))
        putter.start()
        started = time.monotonic()
        assert q.get(None) == {"late": True}  # waits forever, in slices of 0.2 s
        assert time.monotonic() - started >= 0.9
        putter.join()
    finally:
        client.close()


def test_wait_slices_stay_under_the_socket_timeout() -> None:
    slices = list(wait_slices(0.05, 0.01))
    assert slices and all(0 < s <= 0.005 for s in slices)
    forever = wait_slices(None, None)
    assert [next(forever) for _ in range(3)] == [30.0] * 3
    assert list(wait_slices(0, 60)) == []


def test_queue_keys_go_through_a_keyspace(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    assert queue_key("jobs") == "redisopt:queue:jobs"
    q = redisopt.WorkQueue(r, "jobs", keyspace=ks)
    assert q.key == ks.key("queue", "jobs")
    q.put(1)
    assert ks.clear(r) == 1 and len(q) == 0


# ------------------------------------------------------------------ mistake 7: update inside the queue


def guarded_client(server: redisopt.Server) -> redis.Redis:
    return UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0").client()


def test_article_update_and_request_table_pass_the_guard(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    client = guarded_client(server)
    try:
        with pytest.raises(redisopt.DestructiveCommandError):
            client.flushdb()  # the guard is really on
        key = queue_key("requests", ks)
        redisopt.WorkQueue(client, "requests", "json", keyspace=ks).put_many(
            {"idx": i, "status": "queued"} for i in range(20))
        article = redisopt.ArticleQueueUpdate(client, key)
        assert article.update(7, {"idx": 7, "status": "done"}) is True
        assert article.update(99, {"idx": 99, "status": "done"}) is False
        items = [redisopt.get_codec("json").decode(p) for p in client.lrange(key, 0, -1)]
        assert items[7] == {"idx": 7, "status": "done"} and items[6]["status"] == "queued" and len(items) == 20

        table = redisopt.RequestTable(client, "requests2", keyspace=ks)
        for i in range(5):
            table.add(i, {"status": "queued", "data": f"request_{i}"})
        assert table.update(3, {"status": "done"}) is True
        assert table.get(3) == {"status": "done", "data": "request_3"}
        assert table.update(42, {"status": "done"}) is False
        assert client.exists(table.request_key(42)) == 0  # no half-made ghost request
        assert client.lrange(table.queue_key, 0, -1) == ["0", "1", "2", "3", "4"]
    finally:
        client.close()


def test_the_article_update_scans_the_whole_list_and_the_table_touches_one_hash(
        r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """Faithful to the article (LRANGE 0 -1 copied into the script, decoded entry by entry) and
    still correct at the far end of a long queue; the table's update names one key only."""
    assert "redis.call('lrange', queue_key, 0, -1)" in redisopt.ArticleQueueUpdate.LUA
    assert "mistake" in (redisopt.ArticleQueueUpdate.__doc__ or "").lower()
    n = 5_000
    redisopt.WorkQueue(r, "grow", "json", keyspace=ks).put_many({"idx": i} for i in range(n))
    article = redisopt.ArticleQueueUpdate(r, queue_key("grow", ks))
    assert article.update(n - 1, {"idx": n - 1, "s": "done"}) is True
    assert r.lindex(queue_key("grow", ks), -1) == '{"idx":4999,"s":"done"}'
    table = redisopt.RequestTable(r, "grow2", keyspace=ks)
    table.add(1, {"s": "q"})
    with redisopt.count_round_trips(r) as rt:
        assert table.update(1, {"s": "done"})
    assert (rt.round_trips, rt.commands) == (1, 1)  # EVALSHA of one key (script loaded above)
