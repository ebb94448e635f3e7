"""The cache's figures for ``python -m redisopt.benchmarks``: hit-path overhead, stampede loads, codecs.

- ``cache_hit_vs_raw_get``: ``Cache.get_or_load`` on a hit ÷ what a careful engineer writes by
  hand (``orjson.loads(r.get(key))``), medians of paired calls. Goal ≤ 1.3.
- ``stampede_db_loads_lock`` / ``_none`` / ``_xfetch``: store queries for 100 threads released
  together on a cold key (one shared client, a 200 ms query). Goal: 1 with a guard, ~100 without.
- ``codec_<name>_{encode_us,decode_us,bytes}``: one page of 50 user records through each codec.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from redisopt.cache import Cache
from redisopt.cachelab import stampede_burst
from redisopt.codecs import NAMES, get_codec
from redisopt.keyspace import WORKBOOK, KeySpace
from redisopt.store import SQLiteStore

__all__ = ["cache_benchmarks"]

SPACE = KeySpace(WORKBOOK + ":bench:cache")


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sample_record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"사용자 {i}", "email": f"user{i}@example.com", "active": i % 3 != 0,
            "score": i * 1.5, "tags": ["redis", "cache", f"group-{i % 7}"], "manager": None}


def hit_ratio(client: redis.Redis, n: int = 3_000) -> dict[str, float]:
    """get_or_load on a hit vs GET + orjson.loads by hand, on the same key and value. Timed in
    pairs, one call of each back to back, ``n`` times; the medians of each. On a shared machine a
    burst of load then hits both sides of a pair alike, instead of one whole run of one side."""
    cache = Cache(client, SPACE.key("hit"), ttl=600)
    cache.set("user:1", sample_record(1))
    key = cache.value_key("user:1")
    clock = time.perf_counter
    helper_s, raw_s = [], []
    for i in range(n + 100):  # the first 100 pairs warm up (connection, caches) and are dropped
        t0 = clock()
        orjson.loads(client.get(key))
        t1 = clock()
        cache.get_or_load("user:1", dict)
        t2 = clock()
        if i >= 100:
            raw_s.append(t1 - t0)
            helper_s.append(t2 - t1)
    raw, helper = statistics.median(raw_s), statistics.median(helper_s)
    return {"cache_hit_vs_raw_get": helper / raw, "cache_hit_us": helper * 1e6, "raw_get_decode_us": raw * 1e6}


def stampede_loads(client: redis.Redis, stampede: str, threads: int = 100, delay: float = 0.2) -> int:
    """Store queries when ``threads`` threads ask for one cold key at the same instant
    (``cachelab.stampede_burst`` with an unlimited database pool)."""
    with SQLiteStore(delay=delay) as store:
        store.put("hot", sample_record(7))
        burst = stampede_burst(client, SPACE.key(stampede), stampede, store, n=threads, db_connections=None)
        return int(burst["db_queries"])


def codec_figures(repeat: int = 5, n: int = 200) -> dict[str, float]:
    """Encode/decode time (µs per page) and size of one page of 50 records, for every codec."""
    page = [sample_record(i) for i in range(50)]
    out: dict[str, float] = {}
    for name in NAMES:
        codec = get_codec(name)
        data = codec.encode(page)
        assert codec.decode(data) == page
        label = name.replace("+", "_")
        encode = _best(lambda c=codec: [c.encode(page) for _ in range(n)], repeat)
        decode = _best(lambda c=codec, d=data: [c.decode(d) for _ in range(n)], repeat)
        out[f"codec_{label}_encode_us"], out[f"codec_{label}_decode_us"] = encode / n * 1e6, decode / n * 1e6
        out[f"codec_{label}_bytes"] = len(data)
    return out


def cache_benchmarks(client: redis.Redis, quick: bool = False) -> dict[str, Any]:
    """Every cache figure, on ``client`` (a private server: this hammers it); keys cleared after."""
    scale = 10 if quick else 1
    try:
        result: dict[str, Any] = hit_ratio(client, 3_000 // scale)
        for stampede in ("none", "lock", "xfetch"):
            result[f"stampede_db_loads_{stampede}"] = stampede_loads(client, stampede)
        result.update(codec_figures(repeat=3 if quick else 5, n=200 // scale))
        return result
    finally:
        SPACE.clear(client)
