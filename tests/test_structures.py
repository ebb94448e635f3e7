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
    # Fails before the embstr limit was measured: on Valkey 9.1 a 100-byte string is still embstr.
    space = redisopt.KeySpace("redisopt:tz")
    zoo = redisopt.encoding_zoo(r, space.key("enc"))
    space.clear(r)
    assert list(zoo["인코딩"]) == [
        "int", "embstr", "raw",
        "listpack", "hashtable", "hashtable",
        "listpack", "quicklist", "listpack",
        "intset", "listpack", "hashtable",
        "listpack", "skiplist",
    ]


def test_embstr_limit_is_measured_at_the_exact_edge(r: redis.Redis) -> None:
    key = "redisopt:te"  # short: on Valkey 8.1 a long key leaves no value room for embstr at all
    for ttl in (None, 60):
        best = redisopt.embstr_max_value(r, key, ttl=ttl)
        assert best >= 0 and r.exists(key) == 0
        r.set(key, "x" * best, ex=ttl)
        assert r.object("encoding", key) == "embstr"
        r.set(key, "x" * (best + 1), ex=ttl)
        assert r.object("encoding", key) == "raw"
    assert redisopt.embstr_max_value(r, key, ttl=60) <= redisopt.embstr_max_value(r, key)
    r.ping()
    with redisopt.count_round_trips(r) as rt:
        redisopt.embstr_max_value(r, key)
    assert rt.round_trips == 1
    with pytest.raises(ValueError, match="ttl"):
        redisopt.embstr_max_value(r, key, ttl=0)
    assert redisopt.embstr_max_value(r, "redisopt:te" + "k" * 300) in (-1, 44)  # -1 when the key counts


def test_embstr_boundary_rows_and_probe_keys(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    prefix = ks.key("probe")
    table = redisopt.embstr_boundary(r, prefix, [len(prefix) + 5, len(prefix) + 20])
    assert list(table["키 길이"]) == [len(prefix) + 5, len(prefix) + 20]
    longest = table["embstr 최대 값 길이"].fillna(-1)
    assert longest.iloc[1] <= longest.iloc[0]  # a longer key never leaves the value more room
    with pytest.raises(ValueError, match="probe key"):
        redisopt.embstr_boundary(r, prefix, [len(prefix)])
    assert not list(r.scan_iter(match=ks.pattern()))


def test_predicted_string_encodings_match_the_server(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    values = {
        ks.key("i"): "12345", ks.key("neg"): "-42", ks.key("zero"): "0", ks.key("lead"): "007",
        ks.key("plus"): "+5", ks.key("huge"): str(2**64), ks.key("s"): "hello",
        ks.key("kr"): "강도윤", ks.key("mail", "x" * 30): "user1@example.com",
        ks.key("long"): "x" * 200, ks.key("e"): "",
    }
    values |= {ks.key("k" * n): "v" * (60 - n) for n in range(0, 60, 7)}
    r.mset(values)
    probe = "redisopt:tp"  # short: a probe key must be as long as the key it stands for
    assert redisopt.predict_string_encodings(r, values, probe) == redisopt.encodings(r, values)
    assert not list(r.scan_iter(match=probe + ":*"))


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


def test_chapter_prefix_cannot_collide_with_plausible_user_keys(r: redis.Redis) -> None:
    chapter = redisopt.KeySpace.chapter(1)
    assert chapter.prefix == "redisopt:ch01" and chapter.key("user", 1) == "redisopt:ch01:user:1"
    foreign = {"ch01:customer:1": 1, "redisopt:other": 1, "redisopt:ch010:x": 1, "redisopt:ch01": 1}
    r.mset(foreign)
    r.set(chapter.key("mine"), 1)
    try:
        assert chapter.clear(r) == 1
        assert r.exists(*foreign) == len(foreign)
    finally:
        r.delete(*foreign)
    with pytest.raises(ValueError, match="chapter"):
        redisopt.KeySpace.chapter(0)


def test_has_command_asks_the_server(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    assert redisopt.has_command(r, "get") and not redisopt.has_command(r, "nosuchcommand")
    r.hset(ks.key("h"), "f", 1)
    if redisopt.has_command(r, "hexpire"):
        assert r.hpexpire(ks.key("h"), 10_000, "f") == [1]
    else:
        with pytest.raises(redis.ResponseError, match="(?i)unknown command"):
            r.hpexpire(ks.key("h"), 10_000, "f")


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


def test_membership_cases_find_the_last_member_in_both_structures(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.rpush(ks.key("m:list:300"), "stale")  # a left-over from an interrupted run is replaced, not appended to
    cases = redisopt.membership_cases(r, ks.key("m"), 300)
    assert set(cases) == {"SISMEMBER (Set)", "LPOS (List)"}
    assert cases["SISMEMBER (Set)"]() == 1
    assert cases["LPOS (List)"]() == 299  # the last member: LPOS scans all N
    assert r.llen(ks.key("m:list:300")) == r.scard(ks.key("m:set:300")) == 300
    with redisopt.count_round_trips(r) as rt:
        cases["LPOS (List)"]()
    assert rt.round_trips == 1


def test_write_helpers_join_a_callers_transaction(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """rq's convention: with pipeline=, the helpers queue into it and the caller runs EXEC."""
    board = redisopt.Leaderboard(r, ks.key("board"))
    store = redisopt.RecordStore(r, redisopt.KeySpace(ks.key("users")), "hash")
    with redisopt.count_round_trips(r) as rt:
        pipe = r.pipeline(transaction=True)
        assert redisopt.push_many(r, ks.key("list"), list(range(2_500)), pipeline=pipe) == 2_500
        assert redisopt.add_many(r, ks.key("set"), ["a", "b", "a"], pipeline=pipe) == 3
        board.add({"p1": 1.0, "p2": 2.0}, pipeline=pipe)
        store.put_many({1: {"name": "a", "age": "1"}}, pipeline=pipe)
        assert r.exists(ks.key("list"), ks.key("set"), ks.key("board")) == 0  # nothing sent yet
        replies = pipe.execute()
    assert rt.round_trips == 2  # the EXISTS above, then MULTI … EXEC as one write
    assert replies[:3] == [1_000, 2_000, 2_500] and r.llen(ks.key("list")) == 2_500
    assert r.scard(ks.key("set")) == 2 and board.top(1) == [("p2", 2.0)] and store.get(1)["name"] == "a"


def test_insert_ladder_round_trips_are_exact(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    from redisopt.bulk import insert_cases

    counts = {}
    for name, case in insert_cases(r, ks.key("k"), 300).items():
        with redisopt.count_round_trips(r) as rt:
            case()
        counts[name] = (rt.round_trips, rt.commands)
    assert counts == {"개별 SET": (300, 300), "파이프라인": (1, 300), "파이프라인 + MULTI": (1, 302),
                      "MSET (가변 인자)": (1, 1)}
    assert r.get(ks.key("k", 299)) == "v"


def test_populate_makes_a_big_keyspace_under_its_prefix(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    from redisopt.bulk import populate

    assert populate(r, ks.key("pop"), 5_000) == 5_000
    assert r.exists(ks.key("pop", 0), ks.key("pop", 4_999)) == 2
    assert sum(1 for _ in redisopt.scan_keys(r, ks.pattern("pop"))) == 5_000
