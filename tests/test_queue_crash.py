"""Crash tests (DESIGN §8): worker processes SIGKILLed at random moments lose no job.

10 000 jobs go through a ReliableQueue and through a StreamQueue while 4 worker processes claim
them in batches; the test kills a random worker every 0.05-0.3 s (up to 20 times) and starts a new
one under a new name. The workers' side effect is idempotent (SADD of the job into a done set), so the
end state is exact however often a job ran; the times it ran more than once are counted and must
stay under one batch per kill. A control run of the same crashes on a plain List (LPOP) loses jobs,
so the harness can tell. Last, a server stopped under a blocked claim gives an error, not a hang.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import threading
import time
from typing import Any

import pytest
import redis

import redisopt
import redisopt.aio
from redisopt.servers import UrlServer
from tests.helpers import gone

JOBS, WORKERS, BATCH = 10_000, 4, 20
VISIBILITY = 2.0  # long enough that a live worker on this loaded machine is never taken over
RUN_LIMIT = 50.0  # seconds: the run must finish well inside the test's 60 s
MAX_KILLS = 20  # enough to hit many batches in flight; more only slows the run on a loaded machine

_mp = multiprocessing.get_context("fork")


def _queue(kind: str, client: redis.Redis, ks: redisopt.KeySpace) -> Any:
    if kind == "stream":
        return redisopt.StreamQueue(client, "crash", "workers", visibility=VISIBILITY, max_deliveries=100,
                                    keyspace=ks)
    return redisopt.ReliableQueue(client, "crash", visibility=VISIBILITY, max_deliveries=100, keyspace=ks)


def worker(server: redisopt.Server, kind: str, prefix: str, consumer: str) -> None:
    """Claim a batch, do each job's work (idempotent: SADD to the done set), then ack it; forever."""
    client = server.client()
    ks = redisopt.KeySpace(prefix)
    if kind == "plain":  # the control: LPOP a batch, the jobs live only in this process from then on
        key = redisopt.WorkQueue(client, "plain", keyspace=ks).key
        while True:
            items = client.lpop(key, BATCH) or []
            for item in items:
                pipe = client.pipeline(transaction=False)
                pipe.sadd(ks.key("done"), item)
                pipe.incr(ks.key("processed"))
                pipe.execute()
            if not items:
                time.sleep(0.01)
    q = _queue(kind, client, ks)
    while True:
        jobs = q.claim_many(consumer, BATCH) or [j for j in [q.claim(consumer, 0.2)] if j is not None]
        for job in jobs:
            pipe = client.pipeline(transaction=False)
            pipe.sadd(ks.key("done"), job.item)
            pipe.incr(ks.key("processed"))
            if job.deliveries > 1:
                pipe.incr(ks.key("redelivered"))
            pipe.execute()
            q.ack(job)


def finished(r: redis.Redis, ks: redisopt.KeySpace, q: Any, jobs: int) -> bool:
    """Every job done, and none left waiting or in flight (redeliveries of done jobs acked too)."""
    return r.scard(ks.key("done")) >= jobs and len(q) == 0 and q.in_flight() == 0


def crash_run(kind: str, server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace,
              jobs: int = JOBS, pause: tuple[float, float] = (0.05, 0.3)) -> dict[str, int]:
    """Run ``jobs`` through WORKERS processes, SIGKILLing one at random every ``pause`` s (then
    restarting it under a new name) until every job is done and acked, or RUN_LIMIT passes."""
    q = None if kind == "plain" else _queue(kind, r, ks)
    plain = redisopt.WorkQueue(r, "plain", keyspace=ks)  # the article's List of jobs, for the control
    (plain if q is None else q).put_many(range(jobs))
    rng = random.Random(8)
    procs: dict[int, Any] = {}
    started, kills, generation = time.monotonic(), 0, 0

    def spawn(slot: int) -> None:
        nonlocal generation
        generation += 1
        p = _mp.Process(target=worker, args=(server, kind, ks.prefix, f"w{slot}-{generation}"), daemon=True)
        p.start()
        procs[slot] = p

    try:
        for slot in range(WORKERS):
            spawn(slot)
        while time.monotonic() - started < RUN_LIMIT:
            time.sleep(rng.uniform(*pause))
            if (len(plain) == 0) if q is None else finished(r, ks, q, jobs):
                break
            if kills < MAX_KILLS and r.scard(ks.key("done")) < jobs * 0.9:  # kill while work is ahead
                slot = rng.randrange(WORKERS)
                os.kill(procs[slot].pid, signal.SIGKILL)
                procs[slot].join(10)
                kills += 1
                spawn(slot)
            if q is not None:
                q.reap()  # ids a worker moved with BLMOVE and died before recording get a deadline
        if kind == "plain":
            time.sleep(0.5)  # the survivors finish the batches they hold
    finally:
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert gone(p.pid)
    done = {int(x) for x in r.smembers(ks.key("done"))}
    processed = int(r.get(ks.key("processed")) or 0)
    return {"jobs": jobs, "done": len(done), "lost": len(set(range(jobs)) - done), "kills": kills,
            "duplicates": processed - len(done), "redelivered": int(r.get(ks.key("redelivered")) or 0),
            "seconds": round(time.monotonic() - started, 1), "dead": len(q.dead_letters()) if q else 0,
            "left": (len(q) + q.in_flight()) if q else len(plain)}


@pytest.mark.parametrize("kind", ["list", "stream"])
def test_workers_killed_at_random_lose_no_job(kind: str, server: redisopt.Server, r: redis.Redis,
                                              ks: redisopt.KeySpace) -> None:
    result = crash_run(kind, server, r, ks)
    print(kind, result)
    assert result["kills"] >= 3 and result["redelivered"] >= 1  # the crashes really hit jobs in flight
    assert result["lost"] == 0 and result["done"] == JOBS  # the idempotent end state is exact
    assert result["left"] == 0 and result["dead"] == 0  # every job acked, none given up
    assert 0 <= result["duplicates"] <= result["kills"] * BATCH  # at most the batch each dead worker held


def test_the_same_crashes_lose_jobs_from_a_plain_list(server: redisopt.Server, r: redis.Redis,
                                                      ks: redisopt.KeySpace) -> None:
    """The control: without a processing list, whatever a killed worker had popped is gone."""
    result = crash_run("plain", server, r, ks, jobs=3_000, pause=(0.02, 0.1))  # kills before it is all done
    print("plain", result)
    assert result["kills"] >= 1 and result["lost"] >= 1 and result["left"] == 0


# --------------------------------------------------------------------------- the server goes away


def _blocked_claim(kind: str, flavour: str, server: redisopt.Server, outcome: dict[str, Any],
                   ready: threading.Event) -> None:
    """A claim that waits forever (timeout None) on ``server``; records how it ended."""
    def make(client: Any) -> Any:
        cls = {("list", "sync"): redisopt.ReliableQueue, ("stream", "sync"): redisopt.StreamQueue,
               ("list", "aio"): redisopt.aio.ReliableQueue, ("stream", "aio"): redisopt.aio.StreamQueue}[kind, flavour]
        args = ("gone", "g") if kind == "stream" else ("gone",)
        return cls(client, *args, visibility=5.0)

    started = time.monotonic()
    try:
        if flavour == "sync":
            q = make(server.client())
            q.claim("c", 0)
            ready.set()
            outcome["job"] = q.claim("c", None)
        else:
            async def main() -> None:
                client = redisopt.aio.client_for(server)
                q = make(client)
                await q.claim("c", 0)
                ready.set()
                try:
                    outcome["job"] = await q.claim("c", None)
                finally:
                    await client.aclose()
            asyncio.run(main())
    except Exception as exc:  # what the caller gets: judged by the test
        outcome["error"] = exc
    outcome["seconds"] = time.monotonic() - started


@pytest.mark.parametrize("flavour", ["sync", "aio"])
@pytest.mark.parametrize("kind", ["list", "stream"])
def test_a_server_stopped_under_a_blocked_claim_raises_instead_of_hanging(kind: str, flavour: str) -> None:
    server = redisopt.start_server()
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    thread = threading.Thread(target=_blocked_claim, args=(kind, flavour, server, outcome, ready), daemon=True)
    try:
        thread.start()
        assert ready.wait(20)
        time.sleep(0.3)  # the claim is now blocked on the server (BLMOVE / XREADGROUP BLOCK)
        assert thread.is_alive()
    finally:
        server.stop()
    thread.join(20)
    assert not thread.is_alive(), "the claim hung after its server went away"
    assert "job" not in outcome
    error = outcome.get("error")
    assert isinstance(error, redis.exceptions.ConnectionError), outcome
    assert any("waited in claim()" in note and "'c'" in note for note in error.__notes__), error  # names who waited
    print(kind, flavour, f"{outcome['seconds']:.2f} s:", error)


# --------------------------------------------------------------------------- the chapter's harness (mistake 18)


@pytest.mark.parametrize("guarded", [False, True])
def test_the_crash_lab_counts_what_each_queue_loses(server: redisopt.Server, ks: redisopt.KeySpace,
                                                    guarded: bool) -> None:
    client = (UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0") if guarded else server).client()
    try:
        mid = redisopt.queue_crash_lab(client, ks, jobs=20, crash_at=5)
        after = redisopt.queue_crash_lab(client, ks, jobs=20, crash_at=5, moment="after_work")
        assert client.scan(0, match=ks.pattern(), count=1000)[1] == []  # the lab cleans up
    finally:
        client.close()
    assert mid["killed_holding_a_job"].all() and after["killed_holding_a_job"].all()
    assert mid["lost"].to_dict() == {"pubsub": 15, "list_rpop": 1, "reliable_list": 0, "stream": 0}
    assert mid["duplicates"].to_dict() == {"pubsub": 0, "list_rpop": 0, "reliable_list": 0, "stream": 0}
    assert after["lost"].to_dict() == {"pubsub": 14, "list_rpop": 0, "reliable_list": 0, "stream": 0}
    assert after["duplicates"].to_dict() == {"pubsub": 0, "list_rpop": 0, "reliable_list": 1, "stream": 1}
    assert (mid["published"] == 20).all() and (mid["processed"] + mid["lost"] == 20).all()


def test_the_crash_lab_refuses_bad_arguments(r: redis.Redis) -> None:
    with pytest.raises(ValueError, match="moment"):
        redisopt.queue_crash_lab(r, moment="later")
    with pytest.raises(ValueError, match="crash_at"):
        redisopt.queue_crash_lab(r, jobs=5, crash_at=5)
    with pytest.raises(ValueError, match="kinds"):
        redisopt.queue_crash_lab(r, kinds=("kafka",))
