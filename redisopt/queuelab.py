"""Mistake 18 side by side (8장): what each kind of queue loses when its consumer dies mid-job.

``queue_crash_lab`` sends the same jobs through Pub/Sub, a plain List popped with RPOP (the
article's queue), a ``ReliableQueue`` and a ``StreamQueue``. For each, one consumer process
(forked, with its own connections) handles jobs until job ``crash_at``, signals that it holds it,
and is killed there with a real SIGKILL; then a fresh consumer takes over and drains whatever the
queue still offers. Counted, never timed: published, processed (distinct jobs whose work was done),
lost and duplicates (work done twice).

- Pub/Sub delivers to whoever listens at that instant and keeps nothing: every message the dead
  subscriber had been sent but not handled is gone.
- RPOP hands the job to the consumer and forgets it: the job being worked on is gone.
- The reliable List and the Stream keep the job (processing list / pending entries) until it is
  acknowledged: nothing is lost. Killed after the work but before the ack (``moment="after_work"``),
  the job runs twice: at-least-once, so the work must be idempotent.

Also here, for ``python -m redisopt.benchmarks``: ``reliable_figures`` (claim_many vs one claim per job).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import redis

from redisopt.keyspace import WORKBOOK, KeySpace
from redisopt.reliable import ReliableQueue
from redisopt.streamqueue import StreamQueue

__all__ = ["KINDS", "queue_crash_lab", "reliable_figures"]

KINDS = ("pubsub", "list_rpop", "reliable_list", "stream")
MOMENTS = ("mid_job", "after_work")
_mp = multiprocessing.get_context("fork")


class _Lab:
    """The keys and steps of one kind's run."""

    def __init__(self, client: redis.Redis, ks: KeySpace, kind: str, visibility: float) -> None:
        self.client, self.kind, self.ks = client, kind, ks
        self.channel, self.list_key = ks.key(kind, "channel"), ks.key(kind, "list")
        self.processed, self.holding = ks.key(kind, "processed"), ks.key(kind, "holding")
        self.ready = ks.key(kind, "subscribed")
        self.queue: Any = None
        if kind == "reliable_list":
            self.queue = ReliableQueue(client, f"{kind}-jobs", visibility=visibility, keyspace=ks)
        elif kind == "stream":
            self.queue = StreamQueue(client, f"{kind}-jobs", "workers", visibility=visibility, keyspace=ks)

    def publish(self, jobs: int) -> None:
        if self.kind == "pubsub":
            for i in range(jobs):
                self.client.publish(self.channel, i)
        elif self.kind == "list_rpop":
            self.client.lpush(self.list_key, *range(jobs))  # the article: LPUSH in, RPOP out
        else:
            self.queue.put_many(range(jobs))

    def work(self, item: Any) -> None:
        self.client.rpush(self.processed, item)

    def consume(self, name: str, crash_at: int | None, moment: str, timeout: float) -> None:
        """Handle jobs until none comes for ``timeout`` s; at job ``crash_at``, say so and hang."""
        def handle(item: Any, done: Callable[[], Any] = lambda: None) -> None:
            if crash_at is not None and int(item) == crash_at:
                if moment == "after_work":
                    self.work(item)
                self.client.set(self.holding, item)
                time.sleep(3600)  # mid-job: the SIGKILL comes here
            self.work(item)
            done()

        if self.kind == "pubsub":
            sub = self.client.pubsub(ignore_subscribe_messages=True)
            sub.subscribe(self.channel)
            sub.get_message(timeout=1.0)  # the subscribe confirmation
            self.client.set(self.ready, name)
            while (message := sub.get_message(timeout=timeout)) is not None or crash_at is not None:
                if message is not None:
                    handle(message["data"])
            sub.close()
        elif self.kind == "list_rpop":
            while (item := self.client.rpop(self.list_key)) is not None:
                handle(item)
        else:
            while (job := self.queue.claim(name, timeout)) is not None:
                handle(job.item, lambda job=job: self.queue.ack(job))


def _child(lab: _Lab, crash_at: int, moment: str) -> None:
    lab.consume("doomed", crash_at, moment, timeout=3600.0)


def _wait_for(client: redis.Redis, key: str, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if client.exists(key):
            return True
        time.sleep(0.005)
    return False


def _run(client: redis.Redis, ks: KeySpace, kind: str, jobs: int, crash_at: int, moment: str,
         visibility: float) -> dict[str, Any]:
    lab = _Lab(client, ks, kind, visibility)
    if kind != "pubsub":
        lab.publish(jobs)
    proc = _mp.Process(target=_child, args=(lab, crash_at, moment), daemon=True)
    with warnings.catch_warnings():
        # Python 3.12+ warns that fork in a threaded process (a Jupyter kernel) may deadlock; the
        # child touches only its own fresh connections (redis-py resets a pool after a fork).
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    try:
        if kind == "pubsub":
            _wait_for(client, lab.ready)
            lab.publish(jobs)
        held = _wait_for(client, lab.holding)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a real crash: no cleanup, no ack, no goodbye
        proc.join(10)
    if lab.queue is not None:
        time.sleep(visibility)  # the dead consumer's job becomes overdue
    lab.consume("survivor", None, moment, timeout=0.05 if kind == "pubsub" else 0)
    work = [int(x) for x in client.lrange(lab.processed, 0, -1)]
    return {"queue": kind, "published": jobs, "processed": len(set(work)), "lost": jobs - len(set(work)),
            "duplicates": len(work) - len(set(work)), "killed_holding_a_job": held}


def queue_crash_lab(client: redis.Redis, keyspace: KeySpace | None = None, *, jobs: int = 20, crash_at: int = 5,
                    moment: str = "mid_job", visibility: float = 0.2,
                    kinds: tuple[str, ...] = KINDS) -> pd.DataFrame:
    """One row per kind of queue: published, processed, lost, duplicates after a consumer process
    is SIGKILLed holding job ``crash_at`` (``moment``: "mid_job" before its work, "after_work"
    after it but before the ack) and a new consumer drains the rest. About a second in all."""
    if moment not in MOMENTS:
        raise ValueError(f"moment must be one of {MOMENTS}, not {moment!r}")
    if not 0 <= crash_at < jobs:
        raise ValueError(f"crash_at must be a job number in 0..{jobs - 1}, not {crash_at!r}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown queue kinds {sorted(unknown)}; choose from {KINDS}")
    ks = KeySpace((keyspace or KeySpace(WORKBOOK)).key("crashlab"))
    ks.clear(client)
    try:
        return pd.DataFrame([_run(client, ks, kind, jobs, crash_at, moment, visibility) for kind in kinds]
                            ).set_index("queue")
    finally:
        ks.clear(client)


# --------------------------------------------------------------------------- benchmark (python -m redisopt.benchmarks)


def reliable_figures(client: redis.Redis, n: int = 2_000, batch: int = 100) -> dict[str, Any]:
    """``reliable_claim_speedup``: jobs/s of ``claim_many(batch)`` over one claim per job (one LMOVE
    each inside the script); also the raw LMOVE-per-job rate. Best of 3 on the same queue."""
    q = ReliableQueue(client, "bench-claim", visibility=600.0, keyspace=KeySpace("redisopt:bench"))

    def timed(fn: Any) -> float:
        best = float("inf")
        for _ in range(3):
            q.clear()
            client.unlink(q.processing_key("bench"))  # raw LMOVE left it unregistered
            q.put_many(range(n))
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return n / best

    def one_by_one() -> None:
        while q.claim("bench", 0) is not None:
            pass

    def batched() -> None:
        while q.claim_many("bench", batch):
            pass

    def raw_lmove() -> None:
        while client.lmove(q.key, q.processing_key("bench"), "LEFT", "RIGHT") is not None:
            pass

    try:
        single, many, raw = timed(one_by_one), timed(batched), timed(raw_lmove)
    finally:
        q.clear()
        client.unlink(q.processing_key("bench"))
    return {"reliable_claim_speedup": many / single, "reliable_claim_many_jobs_per_s": many,
            "reliable_claim_one_jobs_per_s": single, "raw_lmove_jobs_per_s": raw, "reliable_claim_batch": batch}
