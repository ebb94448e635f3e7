"""Cache on a real server over a real SQLite store, with real threads: stampede guards, leases, invalidation."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisopt
from redisopt import MISS, Cache, SQLiteStore
from redisopt.servers import UrlServer
from redisopt.stampede import xfetch_due


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    with SQLiteStore() as s:
        yield s


def together(n: int, fn: Callable[[], Any]) -> list[Any]:
    """``fn()`` in ``n`` threads released at one instant; their results (errors re-raised)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def keys_under(r: redis.Redis, ks: redisopt.KeySpace) -> set[str]:
    return set(r.scan_iter(match=ks.pattern(), count=1000))


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("ttl", [0, -1, 0.0, float("nan"), float("inf"), True, "60"])
def test_a_ttl_that_is_not_positive_is_refused(r: redis.Redis, ks: redisopt.KeySpace, ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl must be a number of seconds > 0"):
        Cache(r, ks.key("c"), ttl=ttl)


def test_an_unknown_stampede_guard_lists_the_choices(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with pytest.raises(ValueError, match="'none', 'lock', 'xfetch'"):
        Cache(r, ks.key("c"), stampede="locked")


def test_an_unknown_codec_is_refused(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        Cache(r, ks.key("c"), codec="pickle")


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("stampede", ["none", "lock", "xfetch"])
@pytest.mark.parametrize("value", [None, True, False, 0, "", [], {}])
def test_none_and_bools_are_cached_values_distinct_from_a_miss(r: redis.Redis, ks: redisopt.KeySpace,
                                                                 stampede: str, value: Any) -> None:
    cache = Cache(r, ks.key("c"), stampede=stampede)
    calls: list[int] = []
    assert cache.get("k") is MISS
    for _ in range(3):
        got = cache.get_or_load("k", lambda: calls.append(1) or value)
        assert got == value and type(got) is type(value)
    assert calls == [1]  # loaded once: the falsy value was a hit every later time
    assert cache.get("k") == value and cache.get("k") is not MISS


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_mistake_11_setex_with_none_raises_and_the_codec_path_does_not(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """The article's ``r.setex(key, ttl, None)`` raises DataError in redis-py (and a bool too);
    the cache stores the codec's bytes for them instead."""
    for value in (None, True):
        with pytest.raises(redis.exceptions.DataError):
            r.setex(ks.key("article"), 60, value)
    cache = Cache(r, ks.key("c"), ttl=60)
    cache.set("none", None)
    cache.set("yes", True)
    assert r.get(cache.value_key("none")) == "null" and r.get(cache.value_key("yes")) == "true"
    assert 0 < r.ttl(cache.value_key("none")) <= 60
    assert cache.get("none") is None and cache.get("yes") is True


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values, codec=st.sampled_from(["json", "orjson", "msgpack", "orjson+zlib", "msgpack+zlib"]),
       stampede=st.sampled_from(["none", "lock", "xfetch"]))
def test_values_round_trip_through_every_codec(r: redis.Redis, ks: redisopt.KeySpace, value: Any, codec: str,
                                               stampede: str) -> None:
    """On a decode_responses client too: payloads are read undecoded, so binary codecs work."""
    cache = Cache(r, ks.key(codec, stampede), codec=codec, stampede=stampede)
    cache.invalidate("k")
    assert cache.get_or_load("k", lambda: value) == value
    assert cache.get_or_load("k", lambda: "not this") == value
    cache.set("k2", value)
    assert cache.get("k2") == value


def test_an_unencodable_value_raises_and_leaves_no_lock(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    with pytest.raises(TypeError, match="set"):
        cache.get_or_load("k", lambda: {1, 2})
    assert keys_under(r, ks) == set()
    assert cache.get_or_load("k", lambda: [1, 2]) == [1, 2]


# ----------------------------------------------------------------------------- stampede


def test_100_threads_on_a_cold_key_cost_one_query_with_the_lock(r: redis.Redis, ks: redisopt.KeySpace,
                                                                 store: SQLiteStore) -> None:
    store.put("hot", {"id": 1})
    store.reset_queries()
    store.delay = 0.2
    cache = Cache(r, ks.key("c"), store=store)
    assert together(100, lambda: cache.get_or_load("hot")) == [{"id": 1}] * 100
    assert store.queries == 1
    stats = cache.stats.snapshot()
    assert stats["loads"] == 1 and stats["fallback_loads"] == 0 and stats["hits"] + stats["misses"] == 100


def test_without_a_guard_the_same_requests_hit_the_database_many_times(r: redis.Redis, ks: redisopt.KeySpace,
                                                                        store: SQLiteStore) -> None:
    store.put("hot", {"id": 1})
    store.delay = 0.2
    cache = Cache(r, ks.key("c"), store=store, stampede="none")
    together(100, r.ping)  # open the pool's connections first: handshakes would spread the requests
    store.reset_queries()
    assert together(100, lambda: cache.get_or_load("hot")) == [{"id": 1}] * 100
    assert store.queries > 1
    assert store.queries == cache.stats["loads"]


def test_hundreds_of_threads_on_a_shared_client_are_all_served(server: redisopt.Server, ks: redisopt.KeySpace,
                                                                store: SQLiteStore) -> None:
    """300 threads, one client whose pool holds at most 100 connections: waiters poll and give
    their connection back between polls. Waiters that held a connection while waiting for the
    value (a blocking read, as BLPOP-style notifications do) would leave none for the loader's
    COMMIT nor for each other, and fail with PoolTimeoutError (5 s here, 30 s by default)."""
    client = server.client(pool_timeout=5.0)
    try:
        assert client.connection_pool.max_connections == 100
        store.put("hot", "value")
        store.reset_queries()
        store.delay = 0.5
        cache = Cache(client, ks.key("c"), store=store)
        assert together(300, lambda: cache.get_or_load("hot")) == ["value"] * 300
        assert store.queries == 1
    finally:
        client.close()


def test_waiters_past_their_deadline_load_themselves_and_never_get_none(r: redis.Redis,
                                                                         ks: redisopt.KeySpace) -> None:
    """Mistake 10: the article's waiter slept 0.1 s once and returned None. Here a waiter whose
    ``wait`` runs out loads the value itself (and does not store it: it holds no lease)."""
    cache = Cache(r, ks.key("c"), wait=0.05)
    release = threading.Event()
    loads: list[int] = []

    def slow() -> str:
        loads.append(1)
        if len(loads) == 1:
            release.wait(30)  # the first loader is stuck until every waiter has given up
        return "value"

    leader = threading.Thread(target=lambda: cache.get_or_load("k", slow))
    leader.start()
    while not r.exists(cache.lock_key("k")):
        time.sleep(0.001)
    assert together(10, lambda: cache.get_or_load("k", slow)) == ["value"] * 10
    assert cache.stats["fallback_loads"] == 10 and len(loads) == 11
    assert cache.get("k") is MISS  # the fallbacks stored nothing
    release.set()
    leader.join()
    assert cache.get("k") == "value"


def test_a_dead_loaders_lock_expires_and_one_waiter_takes_over(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """A loader that died holding the lock (a token nobody will release) delays the others by at
    most ``lock_ttl``; then exactly one of them loads."""
    cache = Cache(r, ks.key("c"), lock_ttl=0.3, wait=None)
    r.set(cache.lock_key("k"), "a-dead-process", px=300)
    loads: list[int] = []
    assert together(20, lambda: cache.get_or_load("k", lambda: loads.append(1) or "v")) == ["v"] * 20
    assert len(loads) == 1


def test_a_failing_loader_releases_the_lock_and_its_error_reaches_its_caller(r: redis.Redis,
                                                                              ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    with pytest.raises(ZeroDivisionError):
        cache.get_or_load("k", lambda: 1 / 0)
    assert not r.exists(cache.lock_key("k"))
    assert cache.get_or_load("k", lambda: "ok") == "ok"


def test_single_flight_leaves_no_per_key_state(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """No fencing counter, no lock left behind: only the cached values remain."""
    cache = Cache(r, ks.key("c"))
    for i in range(50):
        together(4, lambda i=i: cache.get_or_load(f"k{i}", lambda: i))
    assert keys_under(r, ks) == {cache.value_key(f"k{i}") for i in range(50)}


def test_round_trips_of_a_hit_and_of_a_guarded_miss(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    cache.get_or_load("warm", lambda: 0)  # loads the scripts
    with redisopt.count_round_trips(r) as hit:
        cache.get_or_load("warm", lambda: 0)
    with redisopt.count_round_trips(r) as miss:
        cache.get_or_load("cold", lambda: 1)
    assert (hit.round_trips, hit.commands) == (1, 1)  # GET
    assert (miss.round_trips, miss.commands) == (3, 3)  # GET, GET_OR_LOCK script, COMMIT script


# ----------------------------------------------------------------------------- XFetch


def test_xfetch_decision() -> None:
    """``-delta * beta * ln(rand) >= remaining``, e.g. delta 1 s, 0.5 s left: due when rand <= e^-0.5."""
    edge = math.exp(-0.5)
    assert xfetch_due(1.0, 0.5, 1.0, edge - 1e-9) and not xfetch_due(1.0, 0.5, 1.0, edge + 1e-9)
    assert xfetch_due(1.0, 1.0, 2.0, edge - 1e-9)  # beta 2 favours recomputing earlier
    assert not xfetch_due(0.0, 0.001, 1.0, 1e-12)  # no delta: never early
    assert not xfetch_due(1.0, -1, 1.0, 0.5)


def test_xfetch_stores_the_recompute_time_with_the_value(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"), stampede="xfetch")
    cache.get_or_load("k", lambda: time.sleep(0.05) or "v")
    head, _, payload = r.get(cache.value_key("k")).partition(":")
    assert int(head) >= 50_000 and payload == '"v"'  # delta in µs, then the codec's bytes


def _steady_load(cache: Cache, seconds: float, threads: int, load_s: float) -> tuple[list[float], int]:
    """``threads`` threads calling get_or_load back to back for ``seconds`` on a warm key; returns the
    loads' start times (relative) and how many requests had to wait on the database (misses)."""
    start = time.monotonic()
    started: list[float] = []
    lock = threading.Lock()

    def loader() -> float:
        with lock:
            started.append(time.monotonic() - start)
        time.sleep(load_s)
        return time.monotonic()

    cache.get_or_load("hot", loader)  # warm, with a real recompute time stored beside the value
    cache.stats.reset()
    started.clear()
    start = time.monotonic()

    def client_loop() -> None:
        while time.monotonic() - start < seconds:
            cache.get_or_load("hot", loader)
            time.sleep(0.002)

    together(threads, client_loop)
    return started, cache.stats["misses"]


def test_xfetch_recomputes_before_expiry_so_requests_rarely_wait(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """8 threads for 3 s on a key with a 0.5 s TTL and a 0.1 s recompute (6 expiries). XFetch:
    refreshes happen early, so a request waits on the database only when no request at all fell
    into the last ~0.3 s before an expiry (a stall of the whole machine); allow 2 such misses.
    The lock guard alone, same load: every expiry is a miss that the other threads wait on."""
    xfetch = Cache(r, ks.key("x"), ttl=0.5, stampede="xfetch", beta=1.0)
    loads, waited = _steady_load(xfetch, 3.0, 8, 0.1)
    stats = xfetch.stats.snapshot()
    assert stats["early_refreshes"] >= 4  # ~6 expiries in 3 s, nearly each one pre-empted
    assert waited <= 2
    assert stats["fallback_loads"] == 0 and len(loads) == stats["loads"]
    locked = Cache(r, ks.key("l"), ttl=0.5, stampede="lock")
    _, waited_lock = _steady_load(locked, 3.0, 8, 0.1)
    assert waited_lock >= 4 and waited_lock > waited


# ----------------------------------------------------------------------------- the stale-set race


@pytest.mark.parametrize(("stampede", "stale"), [("none", True), ("lock", False), ("xfetch", False)])
def test_the_stale_set_race_happens_without_a_lease_and_not_with_one(r: redis.Redis, ks: redisopt.KeySpace,
                                                                      store: SQLiteStore, stampede: str,
                                                                      stale: bool) -> None:
    cache = Cache(r, ks.key(stampede), store=store, stampede=stampede)
    result = redisopt.stale_set_race(cache, "user:1", old={"name": "old"}, new={"name": "new"})
    assert result.reader_got == {"name": "old"} and result.store_value == {"name": "new"}
    assert result.stale is stale
    assert result.cached_value == ({"name": "old"} if stale else None)
    assert result.leases_lost == (0 if stale else 1)
    assert cache.get_or_load("user:1") == ({"name": "old"} if stale else {"name": "new"})  # until its TTL
    cache.invalidate("user:1")
    assert cache.get_or_load("user:1") == {"name": "new"}


# ----------------------------------------------------------------------------- writes and invalidation


def test_write_through_keeps_cache_and_store_equal_under_concurrent_writers(r: redis.Redis, ks: redisopt.KeySpace,
                                                                          store: SQLiteStore) -> None:
    cache = Cache(r, ks.key("c"), store=store)
    counter = iter(range(10_000))
    together(20, lambda: [cache.write_through("k", next(counter)) for _ in range(5)])
    assert cache.get("k") == store.get("k") != MISS
    assert not r.exists(cache.lock_key("k"))


def test_write_through_needs_a_store(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with pytest.raises(ValueError, match="needs a store"):
        Cache(r, ks.key("c")).write_through("k", 1)


def test_a_write_cancels_the_lease_of_a_load_in_flight(r: redis.Redis, ks: redisopt.KeySpace,
                                                       store: SQLiteStore) -> None:
    """A reader loaded the old row; a write_behind lands meanwhile: the reader's value is not stored."""
    cache = Cache(r, ks.key("c"), store=store)
    store.put("k", "old")
    loader = redisopt.GatedLoader(store, "k")
    reader = threading.Thread(target=lambda: cache.get_or_load("k", loader))
    reader.start()
    assert loader.read.wait(10)
    cache.write_behind("k", "new")
    loader.gate.set()
    reader.join()
    assert cache.get("k") == "new" and cache.stats["leases_lost"] == 1


def test_invalidate_by_key_tag_and_pattern(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    for i in range(30):
        cache.get_or_load(f"user:{i}", lambda i=i: i, tags=[f"team:{i % 3}", "users"])
        cache.get_or_load(f"post:{i}", lambda i=i: i, tags=["posts"])
    assert cache.invalidate("user:0") and not cache.invalidate("user:0")
    assert cache.invalidate_tag("team:1") == 10
    assert cache.get("user:1") is MISS and cache.get("user:3") == 3 and cache.get("post:1") == 1
    assert not r.exists(cache.tag_key("team:1"))
    keys_before = r.info("commandstats").get("cmdstat_keys", {}).get("calls", 0)
    assert cache.invalidate_pattern("user:*") == 19  # 30 - user:0 - 10 of team:1
    assert r.info("commandstats").get("cmdstat_keys", {}).get("calls", 0) == keys_before  # SCAN, never KEYS
    assert all(cache.get(f"user:{i}") is MISS for i in range(30))
    assert all(cache.get(f"post:{i}") == i for i in range(30))
    assert cache.invalidate_tag("posts") == 30
    assert cache.invalidate_tag("posts") == 0
    assert keys_under(r, ks) == {cache.tag_key("users"), cache.tag_key("team:0"), cache.tag_key("team:2")}


def test_a_tag_set_outlives_its_values(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"), ttl=100)
    cache.set("a", 1, tags=["t"])
    assert 99_000 < r.pttl(cache.tag_key("t")) <= 100_000
    short = Cache(r, ks.key("c"), ttl=10)
    short.set("b", 2, tags=["t"])  # a shorter TTL does not shorten the set
    assert r.pttl(cache.tag_key("t")) > 90_000


def test_pattern_invalidation_escapes_the_namespace(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    odd = Cache(r, ks.key("c[1]"))
    plain = Cache(r, ks.key("c1"))
    odd.set("k", 1)
    plain.set("k", 2)
    assert odd.invalidate_pattern("*") == 1
    assert plain.get("k") == 2


def test_the_decorator_caches_by_arguments(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    cache = Cache(r, ks.key("c"))
    calls: list[int] = []

    @cache.cached
    def user(uid: int, *, full: bool = False) -> dict[str, Any]:
        calls.append(uid)
        return {"id": uid, "full": full}

    @cache.cached(key=lambda uid: f"profile:{uid}", tags=["profiles"])
    def profile(uid: int) -> None:
        calls.append(-uid)

    assert user(1) == user(1) == {"id": 1, "full": False}
    assert user(1, full=True)["full"] is True
    assert profile(7) is None and profile(7) is None
    assert calls == [1, 1, -7]
    names = ("user(1)", "user(1, full=True)", "profile:7")
    assert r.exists(*map(cache.value_key, names)) == 3
    assert user.invalidate(1) and cache.invalidate_tag("profiles") == 1
    user(1)
    profile(7)
    assert calls == [1, 1, -7, 1, -7]


@pytest.mark.parametrize("stampede", ["none", "lock", "xfetch"])
def test_every_operation_passes_the_guard_of_a_users_server(server: redisopt.Server, ks: redisopt.KeySpace,
                                                            store: SQLiteStore, stampede: str) -> None:
    """On a REDIS_URL server the guard refuses destructive commands and reads scripts before they
    load: the cache's commands and scripts all pass, the flusher's stream commands too."""
    client = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0").client()
    try:
        with pytest.raises(redisopt.DestructiveCommandError):
            client.flushdb()  # the guard is really on
        cache = Cache(client, ks.key("c"), store=store, stampede=stampede)
        assert together(10, lambda: cache.get_or_load("k", lambda: "v", tags=["t"])) == ["v"] * 10
        cache.write_through("w", 1)
        cache.write_behind("b", 2)
        assert cache.flusher().drain() == 1 and store.get("b") == 2
        assert cache.invalidate_tag("t") == 1 and cache.invalidate_pattern("*") == 2
        assert cache.invalidate("k") is False
        assert redisopt.stale_set_race(cache, "race").stale is (stampede == "none")
    finally:
        client.close()


def test_the_benchmark_figures(r: redis.Redis) -> None:
    """``python -m redisopt.benchmarks`` gains these keys; the load counts are exact, not timings."""
    from redisopt.cachebench import cache_benchmarks

    figures = cache_benchmarks(r, quick=True)
    assert figures["stampede_db_loads_lock"] == 1 and figures["stampede_db_loads_xfetch"] == 1
    assert figures["stampede_db_loads_none"] > 1
    assert figures["cache_hit_vs_raw_get"] > 0
    for name in ("json", "orjson", "msgpack", "json_zlib", "orjson_zlib", "msgpack_zlib"):
        assert figures[f"codec_{name}_bytes"] > 0 and figures[f"codec_{name}_encode_us"] > 0
    assert figures["codec_orjson_zlib_bytes"] < figures["codec_orjson_bytes"]  # a 50-record page compresses
    assert not list(r.scan_iter(match="redisopt:bench:cache:*"))
