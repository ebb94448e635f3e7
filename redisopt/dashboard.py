"""A live dashboard (7장): queue length, active locks, hit rate and ops/s, sampled while a workload runs.

The sampler runs in a daemon thread on a second connection pool (``bench._sibling_client``), so it
never waits behind the workload's connections, and it takes each sample in one pipelined round
trip (INFO stats + LLEN) plus the SCAN calls that count the locks. It charges itself: its own
commands are subtracted from ops/s, and its own LLEN lookups from the hit rate, so the chart shows
the workload and not the observer. What it cannot subtract is other clients: on a shared server
(REDIS_URL) ops/s and the hit rate include everyone's traffic.

``run_workload`` is the chapter's workload: bursts of jobs through a ``WorkQueue``, workers that
take a ``Lock`` per item and read a cache (GET, on a miss a slow load and SET EX), so every line
of the dashboard moves.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis

from redisopt.bench import _sibling_client
from redisopt.connection import tap_of
from redisopt.keyspace import KeySpace
from redisopt.lock import Lock
from redisopt.monitor import InfoSnapshot, _numeric, active_locks
from redisopt.queue import WorkQueue

__all__ = ["Dashboard", "WorkloadReport", "plot_dashboard", "run_workload"]

COLUMNS = ["t_s", "queue_length", "active_locks", "hit_rate", "hits", "lookups", "ops_per_sec",
           "instantaneous_ops_per_sec"]


class Dashboard:
    """Sample a server every ``interval`` seconds in a thread; ``stop()`` returns one row per sample.

    ``queue``: a WorkQueue or a List key whose length to watch; ``locks``: a SCAN pattern of lock
    keys (``monitor.active_locks``: those with a TTL). Columns: ``t_s`` since start,
    ``queue_length``, ``active_locks``, ``hit_rate`` (``hits`` ÷ ``lookups`` within the interval;
    NaN when there were none, as in an idle gap or the first row: no lookups is no rate, not a 0%
    one, so a segment's rate is ``hits.sum() / lookups.sum()``), ``ops_per_sec`` (commands within
    the interval, the sampler's own excluded) and the server's own lagging ``instantaneous_ops_per_sec``.
    ``active_locks`` is not a snapshot when SCAN takes several calls: a worker that releases a lock
    already counted and takes one in a later bucket is counted twice.
    A final sample is taken in ``stop()``, after the workload, so the last row is the end state.
    """

    def __init__(self, client: redis.Redis, *, queue: WorkQueue | str | None = None, locks: str | None = None,
                 interval: float = 0.05, max_samples: int = 100_000) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
        self.queue_key = queue.key if isinstance(queue, WorkQueue) else queue
        self.locks = locks
        self.interval, self.max_samples = interval, max_samples
        self._client = _sibling_client(client)
        self._tap = tap_of(self._client)
        self._rows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._start = 0.0
        self._last: tuple[InfoSnapshot, int, int] | None = None  # snapshot, own commands, own LLEN hit

    # ------------------------------------------------------------------ one sample

    def sample(self) -> dict[str, float]:
        """Take one sample now (also called by the thread); returns the row it appended."""
        own_before = self._tap.snapshot()[1]
        pipe = self._client.pipeline(transaction=False)
        pipe.info("stats")
        if self.queue_key is not None:
            pipe.llen(self.queue_key)
        replies = pipe.execute()
        snap = InfoSnapshot(time.monotonic(), _numeric(replies[0]))
        length = int(replies[1]) if self.queue_key is not None else 0
        locks = active_locks(self._client, self.locks) if self.locks is not None else 0
        row = {"t_s": snap.at - self._start, "queue_length": length, "active_locks": locks,
               "hit_rate": float("nan"), "hits": 0.0, "lookups": 0.0, "ops_per_sec": 0.0,
               "instantaneous_ops_per_sec": snap.get("instantaneous_ops_per_sec")}
        if self._last is not None:
            before, own_commands, own_hit = self._last
            seconds = snap.at - before.at
            # Our LLEN (sent after INFO) lands in the next interval: a hit if the list existed, else a miss.
            hits = snap.get("keyspace_hits") - before.get("keyspace_hits") - own_hit
            misses = snap.get("keyspace_misses") - before.get("keyspace_misses") - (
                self.queue_key is not None and not own_hit)
            row["hits"], row["lookups"] = hits, hits + misses
            row["hit_rate"] = hits / (hits + misses) if hits + misses > 0 else float("nan")
            done = snap.get("total_commands_processed") - before.get("total_commands_processed") - own_commands
            row["ops_per_sec"] = max(done, 0.0) / seconds if seconds > 0 else 0.0
        own = self._tap.snapshot()[1] - own_before  # INFO, LLEN and the SCANs of this sample
        self._last = (snap, own, int(self.queue_key is not None and length > 0))
        self._rows.append(row)
        return row

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stop.is_set() and len(self._rows) < self.max_samples:
                self.sample()
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()  # fell behind: no burst to catch up
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def start(self) -> Dashboard:
        if self._thread is not None:
            raise RuntimeError("this dashboard is already running")
        self._client.ping()  # connect before the workload starts
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="redisopt-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> pd.DataFrame:
        """Stop sampling, take the final sample, close the connection; re-raises a sampler error."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            try:
                if self._error is None:
                    self.sample()
            finally:
                self._client.close()
        if self._error is not None:
            raise RuntimeError(f"dashboard sampler failed: {self._error!r}") from self._error
        return self.frame()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows, columns=COLUMNS)

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def plot_dashboard(frame: pd.DataFrame, *, title: str = "실시간 모니터링 대시보드",
                   figsize: tuple[float, float] = (7.5, 6.0)) -> None:
    """Four stacked panels over time: queue length, active locks, hit rate, ops/s (Korean labels)."""
    import matplotlib.pyplot as plt

    import redisopt.plots  # noqa: F401  (registers the Korean font)

    panels = [("queue_length", "큐 길이"), ("active_locks", "활성 락 수"),
              ("hit_rate", "히트율 (구간)"), ("ops_per_sec", "초당 명령 수")]
    fig, axes = plt.subplots(len(panels), 1, figsize=figsize, sharex=True)
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.plot(frame["t_s"], frame[column], marker=".", linewidth=0.9)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[2].set_ylim(-0.05, 1.05)
    axes[-1].set_xlabel("경과 시간 (초)")
    axes[0].set_title(title)
    fig.tight_layout()
    plt.show()


# --------------------------------------------------------------------------- the chapter's workload


@dataclass
class WorkloadReport:
    """What the workload did, counted on the client side: jobs, cache hits and misses (its GETs only)."""

    jobs: int
    done: int
    cache_hits: int
    cache_misses: int
    seconds: float

    @property
    def cache_hit_rate(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else 0.0


def run_workload(client: redis.Redis, keyspace: KeySpace, *, jobs: int = 1_500, bursts: int = 3,
                 pause: float = 0.3, workers: int = 4, items: int = 300, cache_ttl: float = 30.0,
                 load_delay: float = 0.001, seed: int = 7) -> WorkloadReport:
    """Bursts of jobs into ``WorkQueue(keyspace, "jobs")``, drained by ``workers`` threads.

    Each job names an item; its worker holds ``Lock(keyspace.key("lock", item))`` while it reads
    ``keyspace.key("cache", item)`` (GET; on a miss it sleeps ``load_delay`` — the slow database —
    and SETs the value with EX ``cache_ttl``). The first burst finds a cold cache, later ones a warm
    one, so the hit rate climbs; the queue saw-tooths with the bursts. Returns when every job is done.
    """
    if jobs < 1 or bursts < 1 or workers < 1 or items < 1:
        raise ValueError("jobs, bursts, workers and items must be >= 1")
    rng = random.Random(seed)
    queue = WorkQueue(client, "jobs", keyspace=keyspace)
    counts = {"done": 0, "hits": 0, "misses": 0}
    guard = threading.Lock()
    produced = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                job = queue.get(timeout=0.02)
                if job is None:
                    if produced.is_set() and len(queue) == 0:
                        return
                    continue
                hit = _serve(client, keyspace, job["item"], cache_ttl, load_delay)
                with guard:
                    counts["done"] += 1
                    counts["hits" if hit else "misses"] += 1
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, name=f"redisopt-worker-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    sizes = [jobs // bursts + (i < jobs % bursts) for i in range(bursts)]
    for i, size in enumerate(sizes):
        if i:
            time.sleep(pause)
        queue.put_many({"item": rng.randrange(items)} for _ in range(size))
    produced.set()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a workload worker failed: {errors[0]!r}") from errors[0]
    return WorkloadReport(jobs, counts["done"], counts["hits"], counts["misses"], time.perf_counter() - started)


def _serve(client: redis.Redis, keyspace: KeySpace, item: Any, ttl: float, load_delay: float) -> bool:
    """One job: under the item's lock, read the cache; on a miss load slowly and fill it. True on a hit."""
    with Lock(client, keyspace.key("lock", item), ttl=5.0, fencing=False):
        key = keyspace.key("cache", item)
        if client.get(key) is not None:
            return True
        time.sleep(load_delay)
        client.set(key, f"value-{item}", ex=max(1, round(ttl)))
        return False
