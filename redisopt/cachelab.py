"""Experiments of the cache chapter (6장): stampedes fired and timed, the article's cache code kept to fail.

``Cache`` (``redisopt.cache``) is the fix; this module is what the notebook measures it with and
against:

- ``together(n, fn)``: ``n`` threads released by one barrier, each timing its own ``fn()`` call —
  a hundred requests arriving at a cold key at the same instant.
- ``stampede_burst``: that burst against one cold key under a stampede guard, as one row (DB
  queries counted by the store, latency percentiles, how many requests got None).
- ``expiry_timeline``: a steady load across several expiries of a hot key, every DB load and
  every request time-stamped, so DB load over time at expiry can be plotted per guard.
- ``article_get_with_lock`` / ``article_invalidate_pattern``: the article's stampede guard and
  pattern invalidation, step for step (SETNX then EXPIRE, DEL without an owner check, a 0.1 s
  sleep then GET that may be None, SETEX of whatever the loader returned; KEYS then one DEL).
- ``spawn_flusher`` / ``kill``: a write-behind flusher in its own process, to SIGKILL mid-batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis

from redisopt.cache import Cache
from redisopt.store import SQLiteStore

__all__ = ["ExpiryTimeline", "article_get_with_lock", "article_invalidate_pattern", "expiry_timeline", "kill",
           "plot_expiry", "spawn_flusher", "stampede_burst", "together", "wait_for"]


def together(n: int, fn: Callable[[], Any], timeout: float = 60.0) -> list[tuple[float, Any]]:
    """Run ``fn`` in ``n`` threads released at one instant; ``[(seconds, result)]`` per thread.

    The first error of any thread is re-raised here after all have finished.
    """
    barrier = threading.Barrier(n)
    results: list[tuple[float, Any] | None] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout)
            started = time.perf_counter()
            value = fn()
            results[i] = (time.perf_counter() - started, value)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def stampede_burst(client: redis.Redis, namespace: str, stampede: str, store: SQLiteStore,
                   key: str = "hot", n: int = 100, db_connections: int | None = 5) -> dict[str, Any]:
    """``n`` threads ask ``Cache(stampede=...)`` for one cold ``key`` at once (the store holds it).

    ``db_connections``: the application reaches the database through a pool of that many
    connections (None: unlimited), so a hundred identical queries queue for it as they would in
    production. Returns one row: the guard, DB queries (``store.queries``), p50/p99/max latency
    in ms, and how many requests got None. The Redis pool's connections are opened first, so
    handshakes do not spread the requests out.
    """
    cache = Cache(client, namespace, ttl=60, stampede=stampede, store=store)
    cache.invalidate(key)
    pool = threading.BoundedSemaphore(db_connections) if db_connections else None

    def loader() -> Any:
        if pool is None:
            return store.get(key)
        with pool:
            return store.get(key)

    together(n, client.ping)
    store.reset_queries()
    runs = together(n, lambda: cache.get_or_load(key, loader))
    ms = pd.Series([s * 1000 for s, _ in runs])
    return {"stampede": stampede, "requests": len(runs), "db_queries": store.queries,
            "p50_ms": ms.median(), "p99_ms": ms.quantile(0.99), "max_ms": ms.max(),
            "got_none": sum(v is None for _, v in runs)}


@dataclass
class ExpiryTimeline:
    """A steady load on one key: ``loads`` (t, s: when each DB load started and how long it took),
    ``requests`` (t, ms: when each request started and its latency), and the cache's counters."""

    stampede: str
    loads: pd.DataFrame
    requests: pd.DataFrame
    stats: dict[str, int]

    def per_bin(self, width: float = 0.025) -> pd.DataFrame:
        """DB loads started and the slowest request, per ``width``-second bin."""
        edges = [i * width for i in range(int(self.requests["t"].max() / width) + 2)]
        loads = pd.cut(self.loads["t"], edges, right=False).value_counts(sort=False)
        slowest = self.requests.groupby(pd.cut(self.requests["t"], edges, right=False), observed=False)["ms"].max()
        return pd.DataFrame({"t": edges[:-1], "db_loads": loads.to_numpy(), "max_ms": slowest.to_numpy()})


def expiry_timeline(client: redis.Redis, namespace: str, stampede: str, *, seconds: float = 1.2,
                    threads: int = 8, ttl: float = 0.3, delay: float = 0.05, pause: float = 0.002,
                    beta: float = 1.0) -> ExpiryTimeline:
    """``threads`` threads read one key for ``seconds`` (a ``pause`` between requests); the value
    lives ``ttl`` seconds and takes ``delay`` seconds to load. Every load and request is recorded."""
    cache = Cache(client, namespace, ttl=ttl, stampede=stampede, beta=beta)
    cache.invalidate("hot")
    loads: list[tuple[float, float]] = []
    requests: list[tuple[float, float]] = []
    guard = threading.Lock()
    start = time.perf_counter()

    def loader() -> str:
        began = time.perf_counter()
        time.sleep(delay)
        with guard:
            loads.append((began - start, time.perf_counter() - began))
        return "value"

    def client_loop() -> None:
        while (began := time.perf_counter()) - start < seconds:
            cache.get_or_load("hot", loader)
            with guard:
                requests.append((began - start, (time.perf_counter() - began) * 1000))
            time.sleep(pause)

    together(threads, lambda: client.ping())
    cache.get_or_load("hot", loader)  # warm: the steady state starts with the value cached
    cache.stats.reset()
    loads.clear()
    start = time.perf_counter()
    together(threads, client_loop)
    cache.invalidate("hot")
    return ExpiryTimeline(stampede, pd.DataFrame(loads, columns=["t", "s"]),
                          pd.DataFrame(requests, columns=["t", "ms"]), cache.stats.snapshot())


def article_get_with_lock(client: redis.Redis, key: str, lock_key: str, loader: Callable[[], Any],
                          ttl: int = 300) -> Any:
    """The article's ``get_request_status_with_lock``, synchronous, step for step. Kept to fail:

    SETNX then EXPIRE (mistake 1: a crash between them leaves a lock with no TTL), DEL in
    ``finally`` without checking whose lock it is (mistake 2), a loser sleeps 0.1 s once and
    returns GET's reply, None if the value is not there yet (mistake 10), and SETEX of whatever
    the loader returned (mistake 11: redis-py refuses None and bools with DataError).
    """
    if client.setnx(lock_key, 1):
        client.expire(lock_key, 10)
        try:
            status = client.get(key)
            if status is None:
                status = loader()
                client.execute_command("SETEX", key, ttl, status)  # redis-py 8 deprecates setex()
            return status
        finally:
            client.delete(lock_key)
    time.sleep(0.1)
    return client.get(key)


def article_invalidate_pattern(client: redis.Redis, pattern: str) -> int:
    """The article's pattern invalidation (mistake 3): KEYS (one call over the whole keyspace,
    the server does nothing else meanwhile), then one DEL of everything it found."""
    keys = client.keys(pattern)
    return client.delete(*keys) if keys else 0


def spawn_flusher(cache: Cache, consumer: str, batch: int = 100, delay: float = 0.0) -> subprocess.Popen[bytes]:
    """``python -m redisopt.writebehind`` for ``cache``'s stream and store, in a child process that
    reaches the same server (``connect()`` hands it down by environment). ``delay``: the child's
    store sleeps that long before each query, so a SIGKILL lands mid-batch."""
    if cache.store is None:
        raise ValueError("spawn_flusher needs a cache with a store")
    args = [sys.executable, "-m", "redisopt.writebehind", cache.store.path, cache.prefix, "--consumer", consumer,
            "--batch", str(batch), "--delay", str(delay), "--codec", cache.codec.name]
    return subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGKILL ``proc`` (no cleanup, no ``finally``: what a crash or an OOM kill does); its exit code."""
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` every 10 ms until it holds; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def plot_expiry(timelines: list[ExpiryTimeline], figsize: tuple[float, float] = (7.5, 4.6)) -> None:
    """DB loads so far (top) and the slowest request per 25 ms (bottom) against time, one line per guard."""
    import matplotlib.pyplot as plt

    from redisopt.plots import use_korean_font

    use_korean_font()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=figsize, sharex=True)
    for tl in timelines:
        loads = tl.loads.sort_values("t")
        top.step([0.0, *loads["t"], tl.requests["t"].max()], [0, *range(1, len(loads) + 1), len(loads)],
                 where="post", label=tl.stampede)
        bins = tl.per_bin()
        bottom.plot(bins["t"], bins["max_ms"], label=tl.stampede)
    top.set_ylabel("누적 DB 조회 수")
    top.set_title("만료 시점의 DB 부하: 가드별")
    top.legend()
    bottom.set_ylabel("25 ms 구간 최장 요청 (ms)")
    bottom.set_xlabel("시간 (초)")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    plt.show()
