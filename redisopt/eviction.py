"""Eviction lab (3장): what each ``maxmemory-policy`` does to cache keys, a work queue and locks.

The article sets ``allkeys-lru`` and then lists an order ("temporary data first, ..., the queue
last") that no policy can follow: a policy sees keys, not their importance. The lab measures it.
Each policy gets its own private server (``start_server``), all run side by side in threads:

1. a work queue (a List, no TTL: jobs waiting for stopped workers) and locks (short TTLs, as locks
   must have: mistakes 1 and 4) are written first, then left alone for ``idle`` seconds — the LRU
   clock ticks once a second, so after that they are strictly older than any cache key;
2. ``maxmemory`` is set to what the server uses at that point plus a small ``budget``;
3. a cache-aside workload runs: Zipf-skewed reads (MGET per batch), and on a miss SET with a TTL.

What follows is exact enough to check: ``allkeys-lru`` evicts the queue (it is the least recently
used key, and with thousands of evictions it is sampled); ``volatile-*`` spare the queue (no TTL)
but evict locks (they have one, and under ``volatile-ttl`` the shortest, so they go first);
``noeviction`` evicts nothing and refuses writes with OOM once full. The fix the numbers support:
the queue and the locks on an instance of their own with ``noeviction`` (``split=True``), the cache
on one with an eviction policy.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pandas as pd
import redis

from redisopt.memory import memory_usage
from redisopt.server import start_server
from redisopt.servers import Server

EVICTION_POLICIES = (
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
)
SPLIT = "분리: 캐시 allkeys-lru + 큐/락 noeviction"  # the row label of the fix
QUEUE = "lab:queue"
LOCK = "lab:lock:"
CACHE = "lab:cache:"
BARRIER_TIMEOUT = 120.0  # seconds: starting the servers and writing the queue take well under that


@dataclass(frozen=True)
class EvictionWorkload:
    """The lab's knobs. Defaults: ~200-300 cache keys fit, and the traffic evicts ~10 times that many."""

    requests: int = 5_000
    keyspace: int = 20_000
    skew: float = 1.0  # Zipf exponent: rank r is requested with weight 1 / r**skew
    value_size: int = 500
    cache_ttl: int = 600  # seconds; longer than a lock's, as in the article
    queue_jobs: int = 500
    locks: int = 20
    lock_ttl: int = 30
    budget: int = 256 << 10  # bytes of room above what the queue and the locks use
    idle: float = 1.1  # seconds the queue and locks stay untouched before the cache traffic
    batch: int = 50  # requests per round trip: small, so reply buffers stay small next to budget
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("requests", "keyspace", "value_size", "queue_jobs", "locks", "budget", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvictionWorkload.{name} must be >= 1, not {getattr(self, name)!r}")
        if self.cache_ttl < 1 or self.lock_ttl < 1:
            raise ValueError("cache_ttl and lock_ttl are whole seconds >= 1")
        if self.idle < 0:
            raise ValueError(f"EvictionWorkload.idle must be >= 0 seconds, not {self.idle!r}")

    def ranks(self) -> list[int]:
        """The requested item ranks (0 = hottest), the same for every policy (seeded)."""
        weights = [1.0 / (r + 1) ** self.skew for r in range(self.keyspace)]
        cum = list(itertools.accumulate(weights))
        return random.Random(self.seed).choices(range(self.keyspace), cum_weights=cum, k=self.requests)


def _is_oom(reply: object) -> bool:
    """The server refused a write because used memory is over maxmemory (redis-py's OutOfMemoryError)."""
    return isinstance(reply, redis.exceptions.OutOfMemoryError)


def _setup(keep: redis.Redis, w: EvictionWorkload) -> None:
    """The queue and the locks, each written once and then left alone."""
    keep.rpush(QUEUE, *(f'{{"job": {i}, "payload": "{"p" * 80}"}}' for i in range(w.queue_jobs)))
    pipe = keep.pipeline(transaction=False)
    for i in range(w.locks):
        pipe.set(f"{LOCK}{i}", f"worker-{i}", nx=True, ex=w.lock_ttl)
    pipe.execute()


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _limit(client: redis.Redis, baseline: int, budget: int, w: EvictionWorkload, holds_queue: bool) -> int:
    """Set maxmemory to ``baseline`` (an empty server) + the queue and locks it holds + ``budget``.

    The queue and locks are counted by MEMORY USAGE rather than by used_memory after writing them,
    which also holds the transient query buffer of the big RPUSH: freed later, it would give the
    cache of one run more room than another's.
    """
    held = 0
    if holds_queue:
        held = memory_usage(client, [QUEUE, *(f"{LOCK}{i}" for i in range(w.locks))])
    limit = baseline + held + budget
    client.config_set("maxmemory", limit)
    return limit


def _traffic(cache: redis.Redis, w: EvictionWorkload, ranks: list[int]) -> dict[str, int]:
    """Cache-aside: one MGET per batch, then one SET (with TTL) per miss; counts hits and OOM refusals."""
    value = "v" * w.value_size
    hits = oom = 0
    for start in range(0, len(ranks), w.batch):
        keys = [f"{CACHE}{rank}" for rank in ranks[start:start + w.batch]]
        found = cache.mget(keys)
        misses = [key for key, got in zip(keys, found, strict=True) if got is None]
        hits += len(keys) - len(misses)
        pipe = cache.pipeline(transaction=False)
        for key in dict.fromkeys(misses):  # a key missed twice in one batch is loaded once
            pipe.set(key, value, ex=w.cache_ttl)
        replies = pipe.execute(raise_on_error=False)
        oom += sum(_is_oom(reply) for reply in replies)
        unexpected = [reply for reply in replies if isinstance(reply, Exception) and not _is_oom(reply)]
        if unexpected:
            raise unexpected[0]
    return {"hits": hits, "oom": oom}


def _fates(keep: redis.Redis, w: EvictionWorkload) -> dict[str, object]:
    """What is left of the queue and the locks, and whether a producer can still enqueue."""
    length = keep.llen(QUEUE)
    pipe = keep.pipeline(transaction=False)
    for i in range(w.locks):
        pipe.exists(f"{LOCK}{i}")
    locks_left = sum(pipe.execute())
    try:
        keep.rpush(QUEUE, '{"job": "new"}')
        enqueue = "OK"
    except redis.exceptions.OutOfMemoryError:
        enqueue = "OOM"
    return {"queue_len": length, "locks_left": locks_left, "enqueue": enqueue}


def _stats(client: redis.Redis) -> dict[str, int]:
    info = client.info()
    return {"evicted": int(info["evicted_keys"]), "used": int(info["used_memory"]), "dbsize": client.dbsize()}


def eviction_run(policy: str, workload: EvictionWorkload | None = None, *, split: bool = False,
               start: threading.Barrier | None = None) -> dict[str, object]:
    """One policy on a private server of its own (two with ``split``); one result row as a dict.

    With ``split``, the cache server runs ``policy`` and the queue and locks live on a second
    server with ``noeviction`` and no limit pressure (the fix). ``start``, a barrier shared by
    several runs, lines their cache traffic up so they share one ``idle`` wait.
    """
    w = workload or EvictionWorkload()
    if policy not in EVICTION_POLICIES:
        raise ValueError(f"unknown maxmemory-policy {policy!r}; choose one of {', '.join(EVICTION_POLICIES)}")
    servers: list[Server] = []
    try:
        servers.append(start_server({"maxmemory-policy": policy}))
        if split:
            servers.append(start_server({"maxmemory-policy": "noeviction"}))
        cache, keep = servers[0].client(), servers[-1].client()
        baseline = _used(cache)
        _setup(keep, w)
        limit = _limit(cache, baseline, w.budget, w, holds_queue=not split)
        ranks = w.ranks()
        if start is not None:
            start.wait(timeout=BARRIER_TIMEOUT)
        time.sleep(w.idle)
        counts = _traffic(cache, w, ranks)
        stats = _stats(cache)  # before _fates, whose test enqueue may recreate an evicted queue
        fates = _fates(keep, w)
    except BaseException:
        if start is not None:
            start.abort()  # the other runs must not wait for this one at the barrier
        raise
    finally:
        for server in servers:
            server.stop()
    return {
        "정책": SPLIT if split else policy,
        "적중률": round(counts["hits"] / w.requests, 3),
        "퇴출된 키": stats["evicted"],
        "OOM 거부": counts["oom"],
        "캐시 키": stats["dbsize"] - (0 if split else (fates["queue_len"] > 0) + fates["locks_left"]),
        "큐 남음": fates["queue_len"] == w.queue_jobs,
        "큐 길이": fates["queue_len"],
        "락 남음": fates["locks_left"],
        "새 작업 추가": fates["enqueue"],
        "maxmemory": limit,
    }


def eviction_lab(policies: Iterable[str] = ("noeviction", "allkeys-lru", "volatile-lru", "volatile-ttl"),
                 workload: EvictionWorkload | None = None, *, split: bool = True) -> pd.DataFrame:
    """Each policy side by side on its own private server (threads, one shared idle wait).

    One row per policy, plus the fix (``split``): the cache under allkeys-lru on one server, the
    queue and locks on a noeviction server. Columns: hit rate, evicted keys (INFO evicted_keys),
    writes refused with OOM, cache keys left, whether the queue is whole and its length, locks
    left (of ``workload.locks``), and whether a producer can still enqueue one more job.
    """
    w = workload or EvictionWorkload()
    runs = [(p, False) for p in policies] + ([("allkeys-lru", True)] if split else [])
    for policy, _ in runs:
        if policy not in EVICTION_POLICIES:
            raise ValueError(f"unknown maxmemory-policy {policy!r}; choose one of {', '.join(EVICTION_POLICIES)}")
    barrier = threading.Barrier(len(runs))
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = [pool.submit(eviction_run, p, w, split=s, start=barrier) for p, s in runs]
        errors = [f.exception() for f in futures]
    causes = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if causes or any(errors):
        raise (causes or [e for e in errors if e is not None])[0]
    rows = [f.result() for f in futures]
    return pd.DataFrame(rows).set_index("정책")


def workload_table(workload: EvictionWorkload | None = None) -> pd.DataFrame:
    """The workload's settings as a one-column table (for the notebook)."""
    w = workload or EvictionWorkload()
    return pd.DataFrame({"값": asdict(w)})
