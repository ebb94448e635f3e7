"""Write-behind: a real flusher process SIGKILLed mid-batch loses nothing once a flusher runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import redisopt
from redisopt import Cache, SQLiteStore, WriteBehindFlusher
from redisopt.writebehind import entry_version
from tests.helpers import ROOT, gone


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    with SQLiteStore() as s:
        yield s


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test, killed and reaped at its end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def spawn(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    """A Python child that reaches this process's server (connect() hands it down by environment)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(os.environ), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    processes.append(proc)
    return proc


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0,
             child: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None and child.poll() is not None:
            raise AssertionError(f"the child exited ({child.returncode}) before {what}: {child.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert gone(proc.pid) or proc.wait(10) == -signal.SIGKILL


def write_all(cache: Cache, n: int) -> dict[str, int]:
    """``n`` writes over ``n * 3 // 4`` keys (the first quarter written twice): the latest value of each."""
    latest: dict[str, int] = {}
    for i in range(n):
        key = f"k{i % (n * 3 // 4)}"
        cache.write_behind(key, i)
        latest[key] = i
    return latest


def test_write_behind_is_in_the_cache_at_once_and_in_the_store_after_a_flush(r: redis.Redis, ks: redisopt.KeySpace,
                                                                               store: SQLiteStore) -> None:
    cache = Cache(r, ks.key("c"), store=store)
    with redisopt.count_round_trips(r) as rt:
        cache.write_behind("user:1", {"name": "kim"}, tags=["users"])
    assert rt.round_trips == 1  # SET, XADD, DEL lock, tag: one MULTI
    assert cache.get("user:1") == {"name": "kim"} and store.get("user:1") is None
    flusher = cache.flusher()
    assert flusher.backlog() == 1 and flusher.drain() == 1
    assert store.get("user:1") == {"name": "kim"}
    assert flusher.backlog() == 0 and flusher.pending() == 0


def test_a_batch_is_one_store_query(r: redis.Redis, ks: redisopt.KeySpace, store: SQLiteStore) -> None:
    cache = Cache(r, ks.key("c"), store=store)
    latest = write_all(cache, 1000)
    store.reset_queries()
    flusher = cache.flusher(batch=100)
    assert flusher.drain() == 1000
    assert store.queries == 10 and flusher.batches == 10
    assert store.items() == latest


def test_a_flusher_killed_before_writing_its_batch_loses_nothing(r: redis.Redis, ks: redisopt.KeySpace,
                                                                  store: SQLiteStore,
                                                                  processes: list[subprocess.Popen[str]]) -> None:
    """The flusher process reads a batch and sleeps in the store's 30 s delay; SIGKILL; a flusher
    under the same consumer name reads its own pending entries first, then the rest."""
    cache = Cache(r, ks.key("c"), store=store)
    latest = write_all(cache, 200)
    proc = spawn(processes, "-m", "redisopt.writebehind", store.path, cache.prefix, "--consumer", "c1",
                 "--batch", "20", "--delay", "30")
    flusher = WriteBehindFlusher(r, cache.prefix, store, consumer="c1", batch=20)
    wait_for(lambda: flusher.pending() == 20, "the child to read a batch", child=proc)
    kill(proc)
    assert flusher.pending() == 20 and store.items() == {}
    assert flusher.drain() == 200
    assert store.items() == latest
    assert flusher.backlog() == 0 and flusher.pending() == 0


CHILD = """
import sys, time
import redisopt
from redisopt import SQLiteStore, WriteBehindFlusher

class StopsAfterWriting(SQLiteStore):
    def put_many(self, items):
        n = super().put_many(items)
        open(sys.argv[3], "w").close()  # the batch is in SQLite, not yet acknowledged
        time.sleep(60)
        return n

flusher = WriteBehindFlusher(redisopt.connect(), sys.argv[2], StopsAfterWriting(sys.argv[1]), consumer="c1", batch=20)
flusher.flush_once()
"""


def test_a_flusher_killed_after_writing_loses_nothing_and_a_replay_never_undoes_newer_writes(
        r: redis.Redis, ks: redisopt.KeySpace, store: SQLiteStore, processes: list[subprocess.Popen[str]],
        tmp_path: Path) -> None:
    """Killed between its write and its XACK: the batch stays pending. Newer writes to the same
    keys are flushed first; then a flusher claims the dead one's batch and writes those older values
    again — and the entry IDs stored as versions keep the newer ones."""
    cache = Cache(r, ks.key("c"), store=store)
    latest = write_all(cache, 100)
    marker = tmp_path / "written"
    proc = spawn(processes, "-c", CHILD, store.path, cache.prefix, str(marker))
    wait_for(marker.exists, "the child to write a batch", child=proc)
    kill(proc)
    first_batch = {f"k{i}": i for i in range(20)}
    assert store.items() == first_batch  # written, but not acknowledged:
    other = WriteBehindFlusher(r, cache.prefix, store, consumer="c2", batch=20, claim_idle=3600)
    assert other.pending() == 20
    for key in first_batch:  # newer writes to the very keys of the dead flusher's batch
        cache.write_behind(key, -1)
        latest[key] = -1
    assert other.drain() == 80 + 20  # the rest and the newer writes; not the dead one's batch (not idle long enough)
    assert store.items() == latest and other.pending() == 20
    rescuer = WriteBehindFlusher(r, cache.prefix, store, consumer="c3", batch=20, claim_idle=0)
    assert rescuer.drain() == 20  # XAUTOCLAIM: the dead one's batch, written once more
    assert store.items() == latest  # older versions did not overwrite newer ones
    assert rescuer.pending() == 0 and rescuer.backlog() == 0


def test_entry_versions_sort_like_stream_ids() -> None:
    ids = ["999-0", "1000-0", "1000-2", "1000-10", "1001-1"]
    assert sorted(ids, key=entry_version) == ids
    assert sorted(map(entry_version, ids)) == [entry_version(i) for i in ids]


def test_the_background_thread_flushes_and_stops(r: redis.Redis, ks: redisopt.KeySpace, store: SQLiteStore) -> None:
    cache = Cache(r, ks.key("c"), store=store)
    with cache.flusher(batch=10, block=0.05) as flusher:
        latest = write_all(cache, 100)
        wait_for(lambda: store.items() == latest, "the thread to flush")
        thread = flusher._thread
    assert thread is not None and not thread.is_alive()
    assert flusher.backlog() == 0


def test_a_background_error_is_raised_by_stop(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with SQLiteStore() as broken:
        cache = Cache(r, ks.key("c"), store=broken)
        flusher = cache.flusher(block=0.05).start()
        broken.close()
        cache.write_behind("k", 1)
        wait_for(lambda: flusher._thread is not None and not flusher._thread.is_alive(), "the thread to fail")
        with pytest.raises(ValueError, match="closed"):
            flusher.stop()
