"""Memory sweeps, bucketing, codec sizes and expiry, against a real server.

Encodings and thresholds are exact and asserted; byte counts are only compared with wide margins
(they depend on the allocator and the generation).
"""

from __future__ import annotations

import time

import pytest
import redis

import redisopt
from redisopt import sweeps
from redisopt.expiry import ZSetExpiry


@pytest.mark.parametrize(("kind", "small", "big"), [
    ("hash", "listpack", "hashtable"),
    ("set-int", "intset", "hashtable"),
    ("set-str", "listpack", "hashtable"),
    ("zset", "listpack", "skiplist"),
])
def test_count_sweep_switches_encoding_exactly_past_the_servers_threshold(
        r: redis.Redis, ks: redisopt.KeySpace, kind: str, small: str, big: str) -> None:
    table = sweeps.count_sweep(r, ks.key("k"), kind)
    limit = int(table["한도"].iloc[0])
    assert set(table["원소 수"]) >= {limit, limit + 1}
    at = table.set_index("원소 수")["인코딩"]
    assert (at[at.index <= limit] == small).all()
    assert (at[at.index > limit] == big).all()
    per = table.set_index("원소 수")["원소당(B)"]
    assert per[limit + 1] > 1.5 * per[limit]  # the switch costs memory per element
    assert r.exists(ks.key("k")) == 0


@pytest.mark.parametrize("kind", ["hash", "set-str", "zset"])
def test_size_sweep_switches_when_one_value_passes_the_size_limit(
        r: redis.Redis, ks: redisopt.KeySpace, kind: str) -> None:
    table = sweeps.size_sweep(r, ks.key("k"), kind)
    limit = int(table["한도"].iloc[0])
    at = table.set_index("값 크기(B)")["인코딩"]
    assert at[limit] == "listpack" and at[limit + 1] != "listpack"


def test_filler_is_never_an_integer_so_sets_of_it_are_not_intsets() -> None:
    values = [sweeps._filler(i, 1) for i in range(1_000)]
    assert len(set(values)) == 1_000
    assert not any(v.lstrip("-").isdigit() for v in values)


def test_size_sweep_refuses_integer_sets(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with pytest.raises(ValueError, match="no size threshold"):
        sweeps.size_sweep(r, ks.key("k"), "set-int")
    with pytest.raises(ValueError, match="unknown kind"):
        sweeps.count_sweep(r, ks.key("k"), "list")


def test_bucketing_saves_memory_only_while_buckets_stay_listpacks(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    limit = redisopt.thresholds(r)["hash-max-listpack-entries"]
    table = redisopt.bucketing(r, ks.key("b"), 5_000, buckets=(100, limit, 4 * limit)).set_index("버킷 크기")
    assert table.loc[100, "인코딩"] == "listpack" and table.loc[limit, "인코딩"] == "listpack"
    assert table.loc[4 * limit, "인코딩"] == "hashtable"
    assert table.loc[100, "키 수"] == 50
    assert table.loc[100, "절약률"] > 0.25  # measured ~0.45-0.63 on Valkey 8.1/9.1
    assert table.loc[4 * limit, "절약률"] < table.loc[100, "절약률"] - 0.2
    assert list(redisopt.scan_keys(r, ks.key("*"))) == []


def test_bucket_of_puts_consecutive_ids_in_one_hash() -> None:
    assert redisopt.bucket_of(0, 100) == (0, "0")
    assert redisopt.bucket_of(199, 100) == (1, "199")


def test_codec_table_sizes_are_exact_and_zlib_shrinks_repetitive_payloads(
        r: redis.Redis, ks: redisopt.KeySpace) -> None:
    obj = [{"id": i, "email": f"user{i}@example.com", "active": True, "note": None} for i in range(50)]
    table = redisopt.codec_table(r, ks.key("c"), obj, repeat=2, number=5).set_index("코덱")
    assert table.loc["orjson", "바이트"] == len(redisopt.get_codec("orjson").encode(obj))
    assert table.loc["msgpack", "바이트"] < table.loc["json", "바이트"]
    assert table.loc["orjson+zlib", "바이트"] < table.loc["orjson", "바이트"] / 3
    assert (table["MEMORY USAGE(B)"] >= table["바이트"]).all()
    assert r.exists(ks.key("c")) == 0


def test_ttl_replies_minus_one_and_minus_two(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.set(ks.key("forever"), 1)
    assert r.ttl(ks.key("forever")) == -1 and r.ttl(ks.key("missing")) == -2


def test_zset_expiry_hides_at_the_deadline_but_holds_memory_until_swept(
        r: redis.Redis, ks: redisopt.KeySpace) -> None:
    z = ZSetExpiry(r, ks.key("z"))
    now = 1_000.0
    z.put("a", "1", 5, now=now)
    z.put("b", "2", 50, now=now)
    assert z.get("a", now=now + 1) == "1"
    assert z.get("a", now=now + 6) is None  # past its deadline: hidden
    assert z.stored() == (2, 2)  # ...but still stored
    assert z.sweep(now=now + 6) == ["a"]
    assert z.stored() == (1, 1) and z.get("b", now=now + 6) == "2"
    assert z.sweep(now=now + 6) == []
    with pytest.raises(ValueError):
        z.put("c", "3", 0)


def test_zset_expiry_renewal_is_not_lost_to_a_sweep(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    z = ZSetExpiry(r, ks.key("z"))
    z.put("a", "old", 1, now=0.0)
    z.put("a", "new", 100, now=0.0)  # renewed before the sweeper ran
    assert z.sweep(now=10.0) == []
    assert z.get("a", now=10.0) == "new"


def test_native_ttl_and_field_ttl_remove_by_themselves(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.set(ks.key("s"), "v", px=100)
    if redisopt.has_field_ttl(r):
        r.hset(ks.key("h"), mapping={"short": 1, "long": 2})
        assert r.execute_command("HPEXPIRE", ks.key("h"), 100, "FIELDS", 1, "short") == [1]
        assert r.execute_command("HTTL", ks.key("h"), "FIELDS", 3, "short", "long", "none")[1:] == [-1, -2]
    deadline = time.monotonic() + 10
    while r.exists(ks.key("s")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.exists(ks.key("s")) == 0
    if redisopt.has_field_ttl(r):
        while r.hget(ks.key("h"), "short") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.hget(ks.key("h"), "short") is None and r.hget(ks.key("h"), "long") == "2"


def test_has_field_ttl_agrees_with_the_server(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    r.hset(ks.key("h"), "f", 1)
    try:
        r.execute_command("HPEXPIRE", ks.key("h"), 1000, "FIELDS", 1, "f")
        works = True
    except redis.ResponseError as exc:
        assert "unknown command" in str(exc).lower()
        works = False
    assert redisopt.has_field_ttl(r) is works


def test_setnx_then_expire_crash_leaves_the_lock_forever_and_set_nx_ex_does_not(
        r: redis.Redis, ks: redisopt.KeySpace) -> None:
    article, fixed = ks.key("article"), ks.key("fixed")
    codes = redisopt.crash_after_setnx(r, {article: False, fixed: True}, ttl=30)
    assert codes == {article: -9, fixed: -9}
    assert r.exists(article) == 1 and r.ttl(article) == -1  # held, and forever
    assert 0 < r.ttl(fixed) <= 30
    assert redisopt.article_setnx_lock(r, article, 10) is False  # nobody gets it again


def test_article_setnx_lock_without_a_crash_sets_the_ttl(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    seen = []
    assert redisopt.article_setnx_lock(r, ks.key("l"), 10, between=lambda: seen.append(r.ttl(ks.key("l"))))
    assert seen == [-1]  # the gap: a lock with no TTL
    assert 0 < r.ttl(ks.key("l")) <= 10
