"""Stampede experiments for 6장: a cold key under a burst, and a hot key across its expiries.

Both count the database's load exactly (``SQLiteStore.queries``, every query any thread made) and
time every request, so a chapter can check the counts and plot the timings:

- ``cold_burst``: ``requests`` threads released at one instant on a key nobody has cached;
- ``steady_expiries``: ``threads`` threads asking back to back for ``seconds`` for a key whose
  TTL runs out again and again — the moment of expiry is where "none" and "lock" make requests
  wait on the database and XFetch, having recomputed early, does not.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import redis

from redisopt.cache import Cache
from redisopt.keyspace import KeySpace
from redisopt.store import SQLiteStore

__all__ = ["StampedeRun", "cold_burst", "steady_expiries"]

VALUE = {"id": 1, "name": "인기 상품", "price": 12_000}


@dataclass
class StampedeRun:
    """One experiment: each request's start and latency, each database query's start, the cache's stats."""

    stampede: str
    requests: pd.DataFrame  # columns t_s (since the start), latency_ms
    queries: list[float] = field(default_factory=list)  # when each database query started, s
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def db_queries(self) -> int:
        return len(self.queries)

    def summary(self) -> dict[str, Any]:
        """The counts and the latency percentiles, one row of a comparison table."""
        ms = self.requests["latency_ms"]
        return {"stampede": self.stampede, "requests": len(ms), "db_queries": self.db_queries,
                "waited": self.stats.get("misses", 0), "early_refreshes": self.stats.get("early_refreshes", 0),
                "p50_ms": round(float(ms.median()), 2), "p99_ms": round(float(ms.quantile(0.99)), 2),
                "max_ms": round(float(ms.max()), 2)}

    def queries_per_bin(self, bin_s: float = 0.05) -> pd.Series:
        """Database queries per ``bin_s`` window over the run: the load the database saw, over time."""
        end = max([0.0, *self.queries, *self.requests["t_s"]])
        edges = [i * bin_s for i in range(int(end / bin_s) + 2)]
        counts = pd.cut(pd.Series(self.queries, dtype=float), edges, right=False).value_counts(sort=False)
        return pd.Series(counts.to_numpy(), index=[round(e, 3) for e in edges[:-1]], name=self.stampede)


class _TimedStore(SQLiteStore):
    """A store that notes when each of its queries started (relative to ``start``)."""

    start = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[float] = []
        self._notes = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._notes:
            self.started.append(time.monotonic() - self.start)
        return super().get(key, default)


def _threads(n: int, body: Any) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            body()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def _experiment(client: redis.Redis, keyspace: KeySpace, stampede: str, threads: int, query_s: float,
                ttl: float, beta: float, body: Any, warm: bool) -> StampedeRun:
    with _TimedStore(delay=query_s) as store:
        store.put("hot", VALUE)
        cache = Cache(client, keyspace.key("stampede", stampede), ttl=ttl, stampede=stampede, store=store, beta=beta)
        cache.invalidate("hot")
        if warm:
            cache.get_or_load("hot")  # cached, with a real recompute time beside it
        _threads(threads, client.ping)  # open the pool's connections before the clock starts
        cache.stats.reset()
        store.started.clear()
        rows: list[tuple[float, float]] = []
        store.start = start = time.monotonic()
        _threads(threads, lambda: body(cache, start, rows))
        frame = pd.DataFrame(sorted(rows), columns=["t_s", "latency_ms"])
        cache.invalidate("hot")
        return StampedeRun(stampede, frame, sorted(store.started), cache.stats.snapshot())


def _timed(cache: Cache, start: float, rows: list[tuple[float, float]]) -> None:
    t0 = time.monotonic()
    cache.get_or_load("hot")
    rows.append((t0 - start, (time.monotonic() - t0) * 1000))  # list.append is atomic


def cold_burst(client: redis.Redis, keyspace: KeySpace, stampede: str, *, requests: int = 100,
               query_s: float = 0.2, beta: float = 1.0) -> StampedeRun:
    """``requests`` threads released at one instant on a cold key, over a store whose query takes ``query_s``."""
    return _experiment(client, keyspace, stampede, requests, query_s, 60.0, beta, _timed, warm=False)


def steady_expiries(client: redis.Redis, keyspace: KeySpace, stampede: str, *, seconds: float = 3.0,
                    threads: int = 8, ttl: float = 0.5, query_s: float = 0.1, beta: float = 1.0,
                    pause_s: float = 0.002) -> StampedeRun:
    """``threads`` threads asking back to back (``pause_s`` apart) for a warm key whose ``ttl`` runs
    out about ``seconds / ttl`` times during the run."""
    def loop(cache: Cache, start: float, rows: list[tuple[float, float]]) -> None:
        while time.monotonic() - start < seconds:
            _timed(cache, start, rows)
            time.sleep(pause_s)

    return _experiment(client, keyspace, stampede, threads, query_s, ttl, beta, loop, warm=True)

