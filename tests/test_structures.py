"""Leaderboard, memory/encodings, key spaces and bulk helpers against the real server."""

from __future__ import annotations

import pytest
import redis

import redisopt


def test_leaderboard_top_matches_python_sorting_including_ties(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    scores = {f"p{i}": i % 7 for i in range(200)}  # many ties
    board = redisopt.Leaderboard(r, ks.key("board"))
    board.add(scores, chunk=50)
    r.hset(ks.key("scores"), mapping=scores)
    assert board.top(15) == redisopt.top_by_sorting(r, ks.key("scores"), 15)
    top_member = board.top(1)[0][0]
    assert board.rank(top_member) == 0 and board.rank("nobody") is None
    with pytest.raises(ValueError):
        board.top(0)


def test_top_is_one_round_trip(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    board = redisopt.Leaderboard(r, ks.key("board"))
    board.add({f"p{i}": i for i in range(1000)})
    with redisopt.count_round_trips(r) as rt:
        assert [m for m, _ in board.top(3)] == ["p999", "p998", "p997"]
    assert rt.round_trips == 1


def test_encoding_zoo_crosses_each_threshold(r: redis.Redis) -> None:
    space = redisopt.KeySpace("tz")  # short keys: Valkey 8 counts the key name toward embstr
    zoo = redisopt.encoding_zoo(r, space.key("enc"))
    space.clear(r)
    assert list(zoo["인코딩"]) == [
        "int", "embstr", "raw",
        "listpack", "hashtable", "hashtable",
        "listpack", "quicklist",
        "intset", "listpack", "hashtable",
        "listpack", "skiplist",
    ]


def test_memory_usage_sums_pipelined(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    keys = [ks.key("m", i) for i in range(30)]
    r.mset({k: "v" * 10 for k in keys})
    one = r.memory_usage(keys[0], samples=0)
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        total = redisopt.memory_usage(r, keys, batch=10)
    assert rt.round_trips == 3
    assert total == sum(r.memory_usage(k, samples=0) for k in keys) and total >= 30 * one * 0.5
    assert redisopt.memory_usage(r, [ks.key("missing")]) == 0
    direct = r.object("encoding", keys[0])
    assert redisopt.encodings(r, [keys[0], ks.key("missing")]) == {keys[0]: direct, ks.key("missing"): None}


def test_thresholds_are_read_from_the_server_in_one_round_trip(r: redis.Redis) -> None:
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        limits = redisopt.thresholds(r)
    assert rt.round_trips == 1
    name = "hash-max-listpack-entries"
    assert limits[name] == int(r.config_get(name)[name])
    assert set(limits) == set(redisopt.memory.THRESHOLDS)


def test_keyspace_clear_touches_only_its_prefix(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    mine, neighbour = redisopt.KeySpace(ks.key("a")), redisopt.KeySpace(ks.key("ab"))
    r.mset({mine.key(i): i for i in range(1200)} | {neighbour.key(1): 1})
    assert mine.clear(r) == 1200
    assert r.exists(neighbour.key(1)) == 1


def test_keyspace_escapes_glob_characters(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.set(ks.key("st*r", 1), 1)
    r.set(ks.key("stXr", 1), 1)
    assert ks.clear(r, "st*r") == 1  # the * is literal, not a wildcard
    assert r.exists(ks.key("stXr", 1)) == 1
    with pytest.raises(ValueError, match="key prefix"):
        redisopt.KeySpace("has space")


def test_push_many_and_add_many_use_variadic_commands(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        assert redisopt.push_many(r, ks.key("l"), list(range(2500)), chunk=1000) == 2500
    assert (rt.round_trips, rt.commands) == (1, 3)
    assert redisopt.add_many(r, ks.key("s"), [1, 2, 2, 3]) == 3
    assert r.lrange(ks.key("l"), 0, 2) == ["0", "1", "2"]
    with pytest.raises(ValueError):
        list(redisopt.bulk.chunked([1], 0))


def test_top_sends_zrange_rev_not_the_deprecated_zrevrange(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    board = redisopt.Leaderboard(r, ks.key("board"))
    board.add({"a": 1, "b": 2})

    def calls(command: str) -> int:
        return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    before = calls("zrange"), calls("zrevrange")
    assert board.top(2) == [("b", 2.0), ("a", 1.0)]
    assert (calls("zrange") - before[0], calls("zrevrange") - before[1]) == (1, 0)
