"""The asyncio twins (redisopt.aio.WorkQueue, redisopt.aio.Lock): the sync API's names and signatures,
the sync code's scripts and logic, and the sync tests' behaviour, on a real server."""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import multiprocessing
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisopt
import redisopt.aio
import redisopt.aio.lock
import redisopt.aio.queue
import redisopt.lock
import redisopt.queue
from redisopt.lockcore import SCRIPTS, LockCore
from redisopt.queue import CHUNK, WINDOW, QueueCore
from redisopt.servers import UrlServer
from tests.test_queue import ITEMS

STRATEGIES = ["auto", "lua"]
PROCESSES, TASKS, INCREMENTS = 4, 8, 20

_mp = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def arun(server: redisopt.Server, body: Callable[[Any], Awaitable[Any]], **client_kwargs: Any) -> Any:
    """Run ``body(client)`` in a fresh event loop with an asyncio client of ``server``, closed after."""
    async def main() -> Any:
        client = redisopt.aio.client_for(server, **client_kwargs)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def drain(q: redisopt.aio.WorkQueue) -> list[Any]:
    out = []
    while (item := await q.get(0)) is not None:
        out.append(item)
    return out


# --------------------------------------------------------------------------- parity with the sync API

# The forms that must differ: len(q) → await q.length(), with → async with, lock.owned → await lock.owned().
RENAMED = {"__len__": "length", "__enter__": "__aenter__", "__exit__": "__aexit__"}
PAIRS = [(redisopt.WorkQueue, redisopt.aio.WorkQueue, QueueCore), (redisopt.Lock, redisopt.aio.Lock, LockCore)]


def _api(cls: type) -> set[str]:
    dunders = {"__len__", "__enter__", "__exit__", "__aenter__", "__aexit__"}
    return {n for n in dir(cls) if not n.startswith("_") or (n in dunders and hasattr(cls, n))}


def _signature(obj: Any) -> str:
    """The signature's text, with an asyncio client or pipeline type read as its sync counterpart."""
    return str(inspect.signature(obj)).replace("redis.asyncio.client.Pipeline", "redis.client.Pipeline") \
                                      .replace("redis.asyncio.Redis", "redis.Redis")


@pytest.mark.parametrize(("sync", "twin", "core"), PAIRS, ids=["WorkQueue", "Lock"])
def test_twins_have_the_sync_names_and_signatures(sync: type, twin: type, core: type) -> None:
    assert issubclass(sync, core) and issubclass(twin, core)
    assert {RENAMED.get(n, n) for n in _api(sync)} == _api(twin)
    assert _signature(sync.__init__) == _signature(twin.__init__)
    for name in _api(sync):
        mine, theirs = inspect.getattr_static(sync, name), inspect.getattr_static(twin, RENAMED.get(name, name))
        if name in core.__dict__:
            assert mine is theirs, f"{name} is shared code: neither twin may override it"
        elif isinstance(mine, property):
            assert inspect.iscoroutinefunction(theirs), f"{name}: a property that does I/O is awaited in the twin"
            assert list(inspect.signature(theirs).parameters) == ["self"]
        elif inspect.isfunction(mine):
            assert not inspect.iscoroutinefunction(mine)
            assert inspect.iscoroutinefunction(theirs), f"{twin.__name__}.{name} must be awaited"
            assert _signature(mine) == _signature(theirs), name


def test_twins_share_the_scripts_and_the_non_io_logic() -> None:
    for name in LockCore.__dict__:
        if not name.startswith("__"):
            assert name not in redisopt.Lock.__dict__ and name not in redisopt.aio.Lock.__dict__, name
    for name in QueueCore.__dict__:
        if not name.startswith("__"):
            assert name not in redisopt.WorkQueue.__dict__ and name not in redisopt.aio.WorkQueue.__dict__, name
    shared = LockCore._scripts or {}
    assert shared, "a Lock was made above (parity test) or below; the scripts are registered"
    twins = redisopt.aio.Lock._async_scripts
    assert {s.sha: s.script for s in shared.values()} == {s.sha: s.script for s in twins.values()}
    assert redisopt.aio.lock.SCRIPTS is redisopt.lock.SCRIPTS is SCRIPTS
    for module in (redisopt.aio.lock, redisopt.aio.queue):  # no Lua and no wire protocol of their own
        source = inspect.getsource(module)
        assert "redis.call" not in source and '"SET"' not in source and '"BLPOP"' not in source


@pytest.fixture(autouse=True)
def _scripts_registered(r: redis.Redis) -> None:
    redisopt.aio.Lock(r, "test:aio:registration")  # no I/O in the constructor: registers the scripts


# --------------------------------------------------------------------------- queue: FIFO, no loss, encoding


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(ITEMS, max_size=12) | ITEMS.map(lambda x: [x]), max_size=6),
    codec=st.sampled_from(["orjson", "json", "msgpack", "orjson+zlib"]),
    chunk=st.integers(1, 4),
    window=st.integers(1, 3),
)
def test_queue_fifo_and_no_loss(server: redisopt.Server, ks: redisopt.KeySpace, batches: list[list[Any]],
                                codec: str, chunk: int, window: int) -> None:
    async def body(client: Any) -> tuple[int, list[Any], int]:
        q = redisopt.aio.WorkQueue(client, "prop", codec, keyspace=ks, chunk=chunk, window=window)
        await q.clear()
        for batch in batches:
            if len(batch) == 1:
                await q.put(batch[0])
            else:
                assert await q.put_many(batch) == len(batch)
        return await q.length(), await drain(q), await q.length()

    expected = [item for batch in batches for item in batch]
    length, drained, after = arun(server, body)
    assert length == len(expected) and repr(drained) == repr(expected) and after == 0


def test_queue_twins_read_each_others_items(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace) -> None:
    sync = redisopt.WorkQueue(r, "both", "msgpack", keyspace=ks)
    sync.put_many([{"from": "sync", "i": i} for i in range(3)])

    async def body(client: Any) -> list[Any]:
        q = redisopt.aio.WorkQueue(client, "both", "msgpack", keyspace=ks)
        assert q.key == sync.key
        got = [await q.get(0) for _ in range(3)]
        await q.put_many(["", "한국어", {"nested": [None]}])
        return got

    assert arun(server, body) == [{"from": "sync", "i": i} for i in range(3)]
    assert [sync.get(0) for _ in range(3)] == ["", "한국어", {"nested": [None]}] and len(sync) == 0


def test_queue_a_100k_batch_takes_the_same_commands_and_round_trips(server: redisopt.Server,
                                                                    ks: redisopt.KeySpace) -> None:
    n = 100_000

    async def body(client: Any) -> tuple[Any, int, Any, Any]:
        q = redisopt.aio.WorkQueue(client, "big", keyspace=ks)
        await client.ping()  # the handshake, counted apart
        with redisopt.count_round_trips(client) as rt:
            sent = await q.put_many({"i": i} for i in range(n))  # a generator: never materialised whole
        return rt, sent, await q.get(0), await q.length()

    rt, sent, first, left = arun(server, body)
    assert sent == n and first == {"i": 0} and left == n - 1
    assert (rt.commands, rt.round_trips) == (math.ceil(n / CHUNK), math.ceil(n / (CHUNK * WINDOW)))


def test_queue_none_and_unserializable_items_raise_before_anything_is_sent(server: redisopt.Server,
                                                                           ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> tuple[Any, Any, list[Any], int, Any]:
        q = redisopt.aio.WorkQueue(client, "bad", keyspace=ks)
        await client.ping()
        items: list[Any] = list(range(2_000))
        items[1_500] = {"when": {1, 2}}
        with redisopt.count_round_trips(client) as rt:
            with pytest.raises(TypeError, match="None"):
                await q.put(None)
            with pytest.raises(TypeError, match="item 3 of the batch"):
                await q.put_many([1, 2, 3, None])
            with pytest.raises(TypeError, match="set") as info:
                await q.put_many(items)
            with pytest.raises(TypeError, match="Opaque|object"):
                await q.put(object())
            pipe = client.pipeline()
            with pytest.raises(TypeError):
                await q.put_many(items, pipeline=pipe)
            later = redisopt.aio.WorkQueue(client, "later", keyspace=ks, chunk=10, window=2)
            bad: list[Any] = list(range(50))
            bad[45] = b"bytes are not JSON"
            with pytest.raises(TypeError, match="bytes") as in_a_later_window:
                await later.put_many(bad)
        await q.put([None])  # None inside an item is a value like any other
        return rt, info.value, pipe.command_stack, (in_a_later_window.value, await later.length(), await q.get(0))

    rt, error, stack, (later_error, later_length, nested) = arun(server, body)
    assert rt.round_trips == 0 and stack == []
    assert (error.index, error.sent) == (1_500, 0)
    assert (later_error.index, later_error.sent, later_length) == (45, 0, 0)
    assert nested == [None]


def test_queue_put_many_raises_an_error_reply_and_the_connection_stays_in_step(server: redisopt.Server,
                                                                              r: redis.Redis,
                                                                              ks: redisopt.KeySpace) -> None:
    key = redisopt.queue.queue_key("wrong", ks)
    r.set(key, "not a list")

    async def body(client: Any) -> tuple[Any, list[Any], int]:
        q = redisopt.aio.WorkQueue(client, "wrong", keyspace=ks, chunk=10, window=3)
        await client.ping()
        with redisopt.count_round_trips(client) as rt:
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await q.put_many(range(100))
            # every reply of the window was read: the one pooled connection answers its own commands
            after = await client.get(key), [await client.echo(str(i)) for i in range(3)]
        return *after, rt.connects

    assert arun(server, body, max_connections=1) == ("not a list", ["0", "1", "2"], 0)  # 0: not dropped


def test_queue_put_many_joins_a_callers_multi_pipeline(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> tuple[Any, Any, list[Any]]:
        q = redisopt.aio.WorkQueue(client, "multi", keyspace=ks)
        await client.ping()
        with redisopt.count_round_trips(client) as rt:
            pipe = client.pipeline(transaction=True)
            pipe.set(ks.key("flag"), "queued")
            assert await q.put_many(range(1, 2_501), pipeline=pipe) == 2_500
            await q.put("last", pipeline=pipe)
            assert len(pipe.command_stack) == 1 + 3 + 1 and rt.round_trips == 0  # not executed by the queue
            replies = await pipe.execute()
        return rt, replies, await drain(q)

    rt, replies, items = arun(server, body)
    assert (rt.round_trips, rt.commands) == (1, 1 + 1 + 3 + 1 + 1)  # MULTI SET 3×RPUSH RPUSH EXEC
    assert replies[-1] == 2_501 and items == [*range(1, 2_501), "last"]


# --------------------------------------------------------------------------- queue: timeouts, blocking


def test_queue_get_zero_does_not_wait_and_t_waits_at_least_t(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> None:
        q = redisopt.aio.WorkQueue(client, "zero", keyspace=ks)
        await client.ping()
        with redisopt.count_round_trips(client) as rt:
            assert await q.get(0) is None
        assert (rt.round_trips, rt.commands) == (1, 1)
        await q.put(False)
        assert await q.get(0) is False  # a falsy item is not a timeout
        for timeout in (0.0005, 0.05, 0.3):
            started = time.monotonic()
            assert await q.get(timeout) is None
            assert time.monotonic() - started >= timeout
        for bad in (-1, math.nan):
            with pytest.raises(ValueError, match="timeout"):
                await q.get(bad)

    arun(server, body)


def test_queue_get_none_blocks_on_the_server_without_blocking_the_loop(server: redisopt.Server,
                                                                       ks: redisopt.KeySpace) -> None:
    """One BLPOP for the whole wait (no polling), while other tasks of the loop keep running."""
    async def body(client: Any) -> tuple[Any, Any, int, float]:
        q = redisopt.aio.WorkQueue(client, "block", keyspace=ks)
        producer = redisopt.aio.client_for(server)
        await client.ping()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def put_later() -> None:
            await asyncio.sleep(0.3)
            await redisopt.aio.WorkQueue(producer, "block", keyspace=ks).put({"late": True})

        tick, put = asyncio.create_task(ticker()), asyncio.create_task(put_later())
        started = time.monotonic()
        with redisopt.count_round_trips(client) as rt:
            item = await q.get(None)
        waited = time.monotonic() - started
        tick.cancel()
        await put
        await producer.aclose()
        return item, rt, ticks, waited

    item, rt, ticks, waited = arun(server, body)
    assert item == {"late": True} and waited >= 0.25
    assert (rt.round_trips, rt.commands) == (1, 1)
    assert ticks >= 5, "the event loop stalled while get() waited"


def test_queue_blocking_get_outlasts_the_socket_timeout(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> tuple[float, Any, float]:
        q = redisopt.aio.WorkQueue(client, "slices", keyspace=ks)
        started = time.monotonic()
        assert await q.get(1.0) is None
        timed_out = time.monotonic() - started

        async def put_later() -> None:
            await asyncio.sleep(1.0)
            await q.put({"late": True})

        putter = asyncio.create_task(put_later())
        started = time.monotonic()
        item = await q.get(None)  # waits forever, in BLPOP slices of 0.2 s
        await putter
        return timed_out, item, time.monotonic() - started

    timed_out, item, waited = arun(server, body, socket_timeout=0.4)
    assert timed_out >= 1.0 and item == {"late": True} and waited >= 0.9


def test_queue_many_consumer_tasks_get_each_item_once(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    n = 3_000

    async def body(client: Any) -> list[int]:
        q = redisopt.aio.WorkQueue(client, "fanout", keyspace=ks, chunk=100, window=2)

        async def consume() -> list[int]:
            got = []
            while (item := await q.get(0.5)) is not None:
                got.append(item)
            return got

        consumers = [asyncio.create_task(consume()) for _ in range(10)]
        await asyncio.gather(q.put_many(range(0, n, 2)), q.put_many(range(1, n, 2)))
        return [i for got in await asyncio.gather(*consumers) for i in got]

    assert sorted(arun(server, body)) == list(range(n))


# --------------------------------------------------------------------------- lock: ownership, fencing


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_non_owner_release_and_extend_raise(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace,
                                                 strategy: str) -> None:
    name = ks.key("lock")

    async def body(client: Any) -> None:
        holder = redisopt.aio.Lock(client, name, ttl=5, strategy=strategy)
        other = redisopt.aio.Lock(client, name, ttl=5, strategy=strategy)
        await holder.acquire(0)
        with pytest.raises(redisopt.LockNotOwnedError, match="never acquired") as never:
            await other.release()
        assert never.value.name == name
        with pytest.raises(redisopt.LockNotOwnedError):
            await other.extend()
        for step in (other.release, lambda: other.extend(5)):
            other.token = "forged"  # a task that believes it holds the lock (e.g. after a long await)
            with pytest.raises(redisopt.LockNotOwnedError, match="no longer ours"):
                await step()
        assert await holder.owned() and r.pttl(name) > 4000  # neither deleted nor shortened the holder's lock
        assert not await other.owned()
        await holder.release()
        assert not await holder.locked()

    arun(server, body)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_expired_holder_is_fenced_and_cannot_free_the_next_holders_lock(
        server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace, strategy: str) -> None:
    name = ks.key("lock")
    resource = redisopt.FencedResource(r, ks.key("resource"))

    async def body(client: Any) -> None:
        slow = redisopt.aio.Lock(client, name, ttl=0.1, strategy=strategy)
        old = await slow.acquire(0)
        resource.write("from the first holder", old)
        deadline = time.monotonic() + 5
        while await slow.locked() and time.monotonic() < deadline:  # the holder "pauses" past its TTL
            await asyncio.sleep(0.01)
        fresh = redisopt.aio.Lock(client, name, ttl=5, strategy=strategy)
        new = await fresh.acquire(0)
        assert new > old
        resource.write("from the new holder", new)
        with pytest.raises(redisopt.StaleTokenError) as stale:
            resource.write("late write of the expired holder", old)
        assert (stale.value.token, stale.value.highest) == (old, new)
        with pytest.raises(redisopt.LockNotOwnedError):
            await slow.release()
        assert await fresh.owned()
        await fresh.release()

    arun(server, body)
    assert resource.read() == "from the new holder"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_without_fencing_leaves_no_counter_key(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace,
                                                    strategy: str) -> None:
    name = ks.key("lock")

    async def body(client: Any) -> tuple[int, list[str], Any]:
        lock = redisopt.aio.Lock(client, name, ttl=5, strategy=strategy, fencing=False)
        token = await lock.acquire(0)
        held = sorted(r.scan_iter(match=ks.pattern()))
        await lock.release()
        with redisopt.count_round_trips(client) as rt:
            async with lock as again:
                assert again == 0
        return token, held, rt

    token, held, rt = arun(server, body)
    assert token == 0 and held == [name] and sorted(r.scan_iter(match=ks.pattern())) == []
    assert (rt.round_trips, rt.commands) == (2, 2)


# --------------------------------------------------------------------------- lock: timeouts, checks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_timeout_semantics(server: redisopt.Server, ks: redisopt.KeySpace, strategy: str) -> None:
    name = ks.key("lock")

    async def body(client: Any) -> None:
        holder = redisopt.aio.Lock(client, name, ttl=10, strategy=strategy)
        waiter = redisopt.aio.Lock(client, name, ttl=10, strategy=strategy)
        first = await holder.acquire(0)
        with pytest.raises(redisopt.LockTimeout) as no_wait:
            await waiter.acquire(0)
        assert waiter.attempts == 1 and no_wait.value.name == name and isinstance(no_wait.value, TimeoutError)
        started = time.monotonic()
        with pytest.raises(redisopt.LockTimeout):
            await waiter.acquire(0.2)
        assert time.monotonic() - started >= 0.2 and waiter.attempts > 1

        async def release_later() -> None:
            await asyncio.sleep(0.3)
            await holder.release()

        releaser = asyncio.create_task(release_later())
        started = time.monotonic()
        token = await waiter.acquire(None)  # waits without limit, until the other task releases
        await releaser
        assert time.monotonic() - started >= 0.3 and token == first + 1
        with pytest.raises(redisopt.LockError, match="already held"):
            await waiter.acquire(0)
        await waiter.release()
        with pytest.raises(ValueError, match="timeout"):
            await waiter.acquire(-1)
        await holder.acquire(0)
        patient = redisopt.aio.Lock(client, name, ttl=10, timeout=0.2, strategy=strategy)
        started = time.monotonic()
        with pytest.raises(redisopt.LockTimeout):
            await patient.acquire()  # the constructor's timeout
        assert time.monotonic() - started >= 0.2
        await holder.release()

    arun(server, body)


@pytest.mark.parametrize("ttl", [0, -1, 0.0, None, "10", True])
def test_lock_ttl_must_be_positive(r: redis.Redis, ks: redisopt.KeySpace, ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        redisopt.aio.Lock(r, ks.key("lock"), ttl=ttl)  # checked before any I/O, whatever the client


def test_lock_bad_strategy_and_braces_are_refused_at_construction(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    with pytest.raises(redisopt.ConfigError, match="strategy"):
        redisopt.aio.Lock(r, ks.key("lock"), strategy="fast")
    with pytest.raises(ValueError, match="hash tag"):
        redisopt.aio.Lock(r, "a{b")


def test_lock_extend_sets_the_remaining_time(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> None:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=1)
        await lock.acquire(0)
        await lock.extend(30)
        assert 29_000 < r.pttl(lock.key) <= 30_000
        await lock.extend(2)  # shorter too: it sets the remaining time, it does not add
        assert 1_000 < r.pttl(lock.key) <= 2_000
        with pytest.raises(ValueError, match="ttl"):
            await lock.extend(0)
        await lock.release()

    arun(server, body)


def test_lock_async_context_manager(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace) -> None:
    name = ks.key("lock")

    async def body(client: Any) -> None:
        async with redisopt.aio.Lock(client, name, ttl=5) as token:
            assert isinstance(token, int) and token >= 1 and r.exists(name)
        assert not r.exists(name)
        with pytest.raises(KeyError):
            async with redisopt.aio.Lock(client, name, ttl=5):
                raise KeyError("the body's own error")
        assert not r.exists(name)  # released on the way out
        with pytest.raises(redisopt.LockNotOwnedError):
            async with redisopt.aio.Lock(client, name, ttl=0.05):
                await asyncio.sleep(0.2)  # the body outlived the lock: the caller must hear of it
        with pytest.raises(KeyError) as both:
            async with redisopt.aio.Lock(client, name, ttl=0.05):
                await asyncio.sleep(0.2)
                raise KeyError("first")
        assert "no longer ours" in " ".join(getattr(both.value, "__notes__", []))

    arun(server, body)


# --------------------------------------------------------------------------- lock: renewal, round trips


def test_lock_renewal_keeps_the_lock_then_stops_at_its_cap(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> None:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=1.0, auto_renew=True, renew_every=0.2, max_renewals=3)
        started = time.monotonic()
        await lock.acquire(0)
        deadline = started + 10
        while await lock.locked() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        held = time.monotonic() - started
        assert not await lock.locked(), "the lock never expired: renewal did not stop at its cap"
        assert lock.renewals == 3
        assert held >= 1.0 + 0.2, "the lock expired no later than its first TTL: renewal did nothing"
        assert lock._renewer.task.done()
        await asyncio.sleep(0.3)
        assert lock.renewals == 3
        with pytest.raises(redisopt.LockNotOwnedError):
            await lock.release()

    arun(server, body)


def test_lock_renewal_task_ends_on_release_and_when_the_lock_is_collected(server: redisopt.Server,
                                                                          ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> None:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=1, auto_renew=True, renew_every=0.05)
        await lock.acquire(0)
        renewer = lock._renewer
        deadline = time.monotonic() + 5
        while lock.renewals < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert lock.renewals >= 2
        await lock.release()
        assert renewer.task.done() and lock._renewer is None
        forgotten = redisopt.aio.Lock(client, ks.key("other"), ttl=1, auto_renew=True, renew_every=0.05)
        await forgotten.acquire(0)
        task, ref = forgotten._renewer.task, weakref.ref(forgotten)
        del forgotten
        gc.collect()
        assert ref() is None, "the renewal task keeps its Lock alive"
        await asyncio.wait_for(task, 2)

    arun(server, body)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_acquire_and_release_take_two_round_trips(server: redisopt.Server, r: redis.Redis, ks: redisopt.KeySpace,
                                                       strategy: str) -> None:
    async def body(client: Any) -> tuple[Any, Any, Any, Any]:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=5, strategy=strategy)
        await client.ping()
        with redisopt.count_round_trips(client) as first:  # probes the server, loads the scripts
            await lock.acquire(0)
            await lock.release()
        with redisopt.count_round_trips(client) as later:
            await lock.acquire(0)
            await lock.release()
        await lock.acquire(0)
        with redisopt.count_round_trips(client) as extend:
            await lock.extend()
        await lock.release()
        return first, later, extend, lock.strategy

    first, later, extend, chosen = arun(server, body)
    assert first.round_trips == 1 + 2  # one probe per pool, in one round trip; no NOSCRIPT after it
    assert (later.round_trips, later.commands) == (2, 2) and extend.round_trips == 1
    assert chosen == redisopt.Lock(r, ks.key("lock"), strategy=strategy).strategy  # the same path as sync


# --------------------------------------------------------------------------- lock: tasks and processes


async def _tasks_increment(lock_name: str, counter: str, tasks: int, n: int, locked: bool) -> list[str]:
    client = redisopt.aio.connect()
    seen: list[str] = []

    async def worker() -> None:
        lock = redisopt.aio.Lock(client, lock_name, ttl=5.0)
        for _ in range(n):
            if not locked:
                value = int(await client.get(counter) or 0)
                await asyncio.sleep(0)  # let another task in between GET and SET
                await client.set(counter, value + 1)
                continue
            async with lock as token:
                value = int(await client.get(counter) or 0)  # a plain read-modify-write: only the lock protects it
                await asyncio.sleep(0)
                await client.set(counter, value + 1)
                seen.append(f"{token}:{value}")

    try:
        await asyncio.gather(*(worker() for _ in range(tasks)))
    finally:
        await client.aclose()
    return seen


def _process_of_tasks(lock_name: str, counter: str, log: str, go: threading.Event) -> None:
    go.wait(30)
    seen = asyncio.run(_tasks_increment(lock_name, counter, TASKS, INCREMENTS, locked=True))
    redisopt.connect().rpush(log, *seen)


@pytest.fixture
def run_processes() -> Iterator:
    started: list = []

    def run(target: Callable[..., None], *args: Any) -> None:
        go = _mp.Event()
        procs = [_mp.Process(target=target, args=(*args, go), daemon=True) for _ in range(PROCESSES)]
        started.extend(procs)
        for p in procs:
            p.start()
        go.set()  # all start racing at one instant
        for p in procs:
            p.join(90)
        assert [p.exitcode for p in procs] == [0] * PROCESSES

    yield run
    for p in started:
        if p.is_alive():
            p.kill()
            p.join(5)


def test_tasks_in_several_processes_under_the_lock_lose_no_update(r: redis.Redis, ks: redisopt.KeySpace,
                                                                   run_processes: Callable[..., None]) -> None:
    counter, log = ks.key("counter"), ks.key("log")
    run_processes(_process_of_tasks, ks.key("lock"), counter, log)
    total = PROCESSES * TASKS * INCREMENTS
    assert int(r.get(counter)) == total
    pairs = sorted((int(t), int(v)) for t, v in (e.split(":") for e in r.lrange(log, 0, -1)))
    # Every hold got its own fencing token, and token order is hold order: the n-th token read n-1.
    assert [v for _, v in pairs] == list(range(total))
    assert [t for t, _ in pairs] == list(range(pairs[0][0], pairs[0][0] + total))


def test_tasks_without_the_lock_lose_updates(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    asyncio.run(_tasks_increment(ks.key("lock"), ks.key("counter"), TASKS, INCREMENTS, locked=False))
    lost = TASKS * INCREMENTS - int(r.get(ks.key("counter")))
    assert lost > 0, "the unlocked race lost nothing: the locked test above would prove nothing"


# --------------------------------------------------------------------------- on a user's server, bytes clients


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_twins_pass_the_guard_on_a_redis_url_server(server: redisopt.Server, ks: redisopt.KeySpace,
                                                    strategy: str) -> None:
    url_server = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0")

    async def body(client: Any) -> Any:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=5, strategy=strategy)
        async with lock:
            await lock.extend(10)
        q = redisopt.aio.WorkQueue(client, "guarded", keyspace=ks)
        await q.put_many([1, 2])
        with pytest.raises(redisopt.DestructiveCommandError):  # the guard is really on
            await client.eval("return redis.call('FLUSHDB')", 0)
        return [await q.get(0), await q.get(1)]

    assert arun(url_server, body) == [1, 2]


def test_send_packed_is_guarded_on_a_redis_url_server(server: redisopt.Server, r: redis.Redis,
                                                      ks: redisopt.KeySpace) -> None:
    from redisopt.connection import pack_command

    r.set(ks.key("precious"), "keep me")
    url_server = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0")

    async def body(client: Any) -> Any:
        await client.ping()
        with redisopt.count_round_trips(client) as rt:
            with pytest.raises(redisopt.DestructiveCommandError):
                await redisopt.aio.connection.send_packed(
                    client, [pack_command((b"RPUSH", ks.key("l").encode()), [b"x"]), pack_command((b"FLUSHDB",), [])])
        return rt.round_trips, await redisopt.aio.connection.send_packed(
            client, [pack_command((b"RPUSH", ks.key("l").encode()), [b"x", b"y"])])

    assert arun(url_server, body) == (0, [2])  # refused before any byte was sent, then ordinary writes run
    assert r.get(ks.key("precious")) == "keep me" and r.lrange(ks.key("l"), 0, -1) == ["x", "y"]


def test_twins_work_on_a_bytes_client(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> Any:
        lock = redisopt.aio.Lock(client, ks.key("lock"), ttl=5)
        await lock.acquire(0)
        assert await lock.owned()
        await lock.release()
        q = redisopt.aio.WorkQueue(client, "raw", keyspace=ks)
        await q.put({"k": "é"})
        return await q.get(None)

    assert arun(server, body, decode_responses=False) == {"k": "é"}
