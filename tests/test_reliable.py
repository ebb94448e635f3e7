"""ReliableQueue and its asyncio twin on a real server: claim/ack, takeover of stalled jobs, reap,
dead letters, timeouts, one round trip per claim_many, one hash tag, the guard of a user's server.

The behaviour tests take a ``kind`` fixture ("list" here); tests/test_streamqueue.py imports them
and sets ``kind`` to "stream", so the StreamQueue (and its twin) passes the very same tests.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import redisopt
import redisopt.aio
import redisopt.aio.reliable
import redisopt.aio.streamqueue
import redisopt.queuelab
import redisopt.reliable
import redisopt.streamqueue
from redisopt.reliable import Job, ReliableCore
from redisopt.servers import UrlServer
from redisopt.streamqueue import StreamCore

CLASSES = {("list", "sync"): redisopt.reliable.ReliableQueue, ("list", "aio"): redisopt.aio.reliable.ReliableQueue,
           ("stream", "sync"): redisopt.streamqueue.StreamQueue,
           ("stream", "aio"): redisopt.aio.streamqueue.StreamQueue}
ITEMS = [0, "text", {"nested": [1, 2.5, None]}, [True, False], -(2**63), "ünïcode", {"": ""}, 3.25]


class Twin:
    """An asyncio queue driven from sync test code: each awaited method runs on one private loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: Any) -> None:
        self.loop, self.queue = loop, queue

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.queue, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self.loop.run_until_complete(attr(*a, **k))
        return attr

    def __len__(self) -> int:
        return self.loop.run_until_complete(self.queue.length())


@pytest.fixture
def kind() -> str:
    return "list"


@pytest.fixture(params=["sync", "aio"])
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(server: redisopt.Server, ks: redisopt.KeySpace, kind: str, flavour: str) -> Iterator[Callable[..., Any]]:
    """``make(name="jobs", visibility=…, max_deliveries=…, url=False, **client_kwargs)``: a queue of
    this test's kind and flavour on its own client (``url=True``: through the REDIS_URL guard)."""
    loop = asyncio.new_event_loop()
    clients: list[Any] = []

    def factory(name: str = "jobs", *, url: bool = False, visibility: float = 30.0, max_deliveries: int = 5,
                **client_kwargs: Any) -> Any:
        target = UrlServer(f"redis://:{server.password}@127.0.0.1:{server.port}/0") if url else server
        cls = CLASSES[kind, flavour]
        args: tuple[Any, ...] = (name, "workers") if kind == "stream" else (name,)
        if flavour == "sync":
            client = target.client(**client_kwargs)
            clients.append(client)
            return cls(client, *args, visibility=visibility, max_deliveries=max_deliveries, keyspace=ks)
        client = redisopt.aio.client_for(target, **client_kwargs)
        clients.append(client)
        return Twin(loop, cls(client, *args, visibility=visibility, max_deliveries=max_deliveries, keyspace=ks))

    yield factory
    for client in clients:
        if isinstance(client, redis.Redis):
            client.close()
        else:
            loop.run_until_complete(client.aclose())
    loop.close()


def sync_twin(q: Any) -> Any:
    """A sync queue on the same keys as ``q`` (a producer thread cannot share an event loop)."""
    core = q.queue if isinstance(q, Twin) else q
    server_client = redisopt.default_server().client()
    if isinstance(core, StreamCore):
        return redisopt.StreamQueue(server_client, core.name, core.group, keyspace=_space(core))
    return redisopt.ReliableQueue(server_client, core.name, keyspace=_space(core))


def _space(core: Any) -> redisopt.KeySpace:
    prefix = core.key.split(":rq:" if isinstance(core, ReliableCore) else ":sq:")[0]
    return redisopt.KeySpace(prefix)


def raw_client(q: Any) -> Any:
    return q.queue.client if isinstance(q, Twin) else q.client


# --------------------------------------------------------------------------- behaviour (both kinds, both flavours)


def test_put_claim_ack_delivers_every_item_once_in_order(make: Callable[..., Any]) -> None:
    q = make()
    assert q.put_many(ITEMS) == len(ITEMS)
    first = q.put({"last": True})
    assert isinstance(first, str) and len(q) == len(ITEMS) + 1
    jobs = q.claim_many("c1", 3) + q.claim_many("c1", 100)
    assert [j.item for j in jobs] == [*ITEMS, {"last": True}]
    assert all(j.deliveries == 1 and j.consumer == "c1" for j in jobs)
    assert len({j.id for j in jobs}) == len(jobs) and jobs[-1].id == first
    assert len(q) == 0 and q.in_flight() == len(jobs)
    assert all(q.ack(j) for j in jobs)
    assert not q.ack(jobs[0])  # a second ack finds nothing
    assert q.in_flight() == 0 and q.claim("c1", 0) is None and q.dead_letters() == []


def test_claim_many_is_one_round_trip(make: Callable[..., Any]) -> None:
    q = make()
    q.put_many(range(500))
    q.claim_many("warm", 1)  # scripts loaded, group created
    with redisopt.count_round_trips(raw_client(q)) as rt:
        jobs = q.claim_many("c", 200)
    assert len(jobs) == 200 and rt.round_trips == 1 and rt.commands == 1
    with redisopt.count_round_trips(raw_client(q)) as rt:
        assert q.ack(jobs[0]) is True
    assert rt.round_trips == 1


def test_a_stalled_job_is_taken_over_and_its_old_holder_cannot_ack_it(make: Callable[..., Any]) -> None:
    q = make(visibility=0.2)
    q.put_many(["a", "b"])
    held = q.claim_many("dead-worker", 2)
    assert q.claim_many("other", 5) == []  # not overdue yet
    time.sleep(0.3)
    taken = q.claim_many("other", 5)
    assert [j.item for j in taken] == ["a", "b"] and [j.deliveries for j in taken] == [2, 2]
    assert all(j.consumer == "other" for j in taken)
    if isinstance(q.queue if isinstance(q, Twin) else q, ReliableCore):
        assert q.ack(held[0]) is False  # the list queue knows the job moved to "other"
    assert q.ack(taken[1]) is True


def test_reap_returns_overdue_jobs_then_dead_letters_after_max_deliveries(make: Callable[..., Any]) -> None:
    q = make(visibility=0.15, max_deliveries=3)
    q.put("poison")
    for delivery in (1, 2, 3):
        job = q.claim("w", 0)
        assert job is not None and job.item == "poison" and job.deliveries == delivery
        assert q.reap() == 0  # not overdue yet
        time.sleep(0.2)
        assert q.reap() == 1  # back to the queue (1, 2), to the dead letters (3)
    dead = q.dead_letters()
    assert [(j.item, j.deliveries) for j in dead] == [("poison", 3)]
    assert q.claim("w", 0) is None
    q.put("fine")
    job = q.claim("w", 0)
    assert job is not None and job.item == "fine" and job.deliveries == 1
    assert q.claim("w", 0) is None and q.in_flight() == 1


def test_a_stalled_job_past_max_deliveries_is_dead_lettered_by_claim_too(make: Callable[..., Any]) -> None:
    q = make(visibility=0.1, max_deliveries=2)
    q.put("poison")
    for _ in range(2):
        assert q.claim("w", 0) is not None
        time.sleep(0.15)
    assert q.claim("w", 0) is None  # the third delivery is refused: dead letter
    assert [(j.item, j.deliveries) for j in q.dead_letters()] == [("poison", 2)]


def test_dead_letters_keep_the_order_of_the_jobs(make: Callable[..., Any]) -> None:
    q = make(visibility=0.1, max_deliveries=1)
    q.put_many(["first", {"second": 2}, 3])
    assert len(q.claim_many("w", 3)) == 3
    time.sleep(0.15)
    assert q.reap() == 3
    assert [(j.item, j.deliveries) for j in q.dead_letters()] == [("first", 1), ({"second": 2}, 1), (3, 1)]


def test_claim_timeouts_none_zero_and_t(make: Callable[..., Any]) -> None:
    q = make()
    with redisopt.count_round_trips(raw_client(q)) as rt:
        assert q.claim("c", 0) is None  # 0: one script call, no blocking command
    assert rt.round_trips <= 2  # (+ the group's creation, once, for a stream)
    started = time.monotonic()
    assert q.claim("c", 0.3) is None
    assert time.monotonic() - started >= 0.3
    producer = sync_twin(q)
    timer = threading.Timer(0.5, lambda: producer.put({"late": True}))
    timer.start()
    started = time.monotonic()
    job = q.claim("c", None)
    assert job is not None and job.item == {"late": True} and time.monotonic() - started >= 0.4
    timer.join()
    producer.client.close()
    with pytest.raises(ValueError, match="timeout"):
        q.claim("c", -1)


def test_a_blocking_claim_outlasts_the_socket_timeout(make: Callable[..., Any]) -> None:
    q = make(socket_timeout=0.8)  # slices of 0.4 s: a loaded machine has 0.4 s to deliver each reply
    producer = sync_twin(q)
    timer = threading.Timer(2.0, lambda: producer.put("late"))
    timer.start()
    started = time.monotonic()
    job = q.claim("c", None)  # several slices, each under the socket timeout: no TimeoutError
    assert job is not None and job.item == "late" and time.monotonic() - started >= 1.9
    timer.join()
    producer.client.close()


def test_bad_input_is_refused_before_anything_is_sent(make: Callable[..., Any]) -> None:
    q = make()
    with pytest.raises(TypeError, match="None"):
        q.put(None)
    with pytest.raises(TypeError) as info:
        q.put_many([1, 2, {"bad": object()}])
    assert getattr(info.value, "sent", None) == 0 and len(q) == 0
    with pytest.raises(ValueError, match="consumer"):
        q.claim("", 0)
    with pytest.raises(ValueError, match="n must be"):
        q.claim_many("c", 0)
    for bad in ({"visibility": 0}, {"max_deliveries": 0}, {"name": "a{b}"}):
        with pytest.raises(ValueError):
            make(**bad)


def test_every_key_shares_one_cluster_slot(make: Callable[..., Any]) -> None:
    q = make("tagged")
    q.put_many([1, 2])
    q.claim_many("c", 1)
    core = q.queue if isinstance(q, Twin) else q
    keys = (core._all_keys(["c"]) if isinstance(core, ReliableCore) else [core.key, core.dead_key])
    assert len({key_slot(k.encode()) for k in keys}) == 1 and "{tagged}" in keys[0]


def test_every_verb_passes_the_guard_of_a_users_server(make: Callable[..., Any]) -> None:
    q = make(url=True, visibility=0.1, max_deliveries=1)
    with pytest.raises(redisopt.DestructiveCommandError):
        raw_client(q).flushdb() if not isinstance(q, Twin) else q.loop.run_until_complete(raw_client(q).flushdb())
    q.put("one")
    q.put_many(range(3))
    jobs = q.claim_many("c", 2)
    assert q.ack(jobs[0]) and q.claim("c", 0.05) is not None
    time.sleep(0.15)
    assert q.reap() >= 1 and q.dead_letters()
    assert q.clear() >= 1


def test_twins_read_each_others_items(make: Callable[..., Any], flavour: str) -> None:
    q = make()
    other = sync_twin(q)
    other.put_many(["from sync", 2])
    jobs = q.claim_many("c", 5)
    assert [j.item for j in jobs] == ["from sync", 2]
    assert all(other.ack(j) for j in jobs)
    other.client.close()


# --------------------------------------------------------------------------- the List queue only


def test_an_id_moved_by_blmove_whose_consumer_died_comes_back(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    """The one window outside a script: BLMOVE done, the deadline never recorded."""
    q = redisopt.ReliableQueue(r, "orphans", visibility=0.15, keyspace=ks)
    q.put("job")
    r.lmove(q.key, q.processing_key("crashed"), "LEFT", "RIGHT")  # what the dying consumer did
    r.sadd(q.consumers_key, "crashed")
    assert q.claim("other", 0) is None and q.reap() == 0  # reap gives it a deadline
    time.sleep(0.2)
    assert q.reap() == 1
    job = q.claim("other", 0)
    assert job is not None and job.item == "job" and job.deliveries == 1  # never delivered before


def test_a_stalled_id_whose_data_is_gone_is_forgotten(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.ReliableQueue(r, "ghost", visibility=0.1, keyspace=ks)
    q.put_many(["ghost", "real"])
    ghost = q.claim("w", 0)
    r.hdel(q.jobs_key, ghost.id)  # its payload vanished while it was claimed
    time.sleep(0.15)
    job = q.claim("w", 0)
    assert job is not None and job.item == "real"  # the ghost is dropped, not delivered
    assert r.zscore(q.deadlines_key, ghost.id) is None and r.hget(q.owners_key, ghost.id) is None
    assert r.lrange(q.processing_key("w"), 0, -1) == [job.id] and q.in_flight() == 1


def test_reap_keeps_the_order_of_overdue_jobs(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.ReliableQueue(r, "order", visibility=0.1, keyspace=ks)
    q.put_many(range(5))
    q.claim_many("w", 3)
    time.sleep(0.15)
    assert q.reap() == 3
    assert [j.item for j in q.claim_many("w", 5)] == [0, 1, 2, 3, 4]


def test_acked_jobs_leave_nothing_behind(r: redis.Redis, ks: redisopt.KeySpace) -> None:
    q = redisopt.ReliableQueue(r, "clean", keyspace=ks)
    q.put_many(range(100))
    for job in q.claim_many("w", 100):
        q.ack(job)
    for key in (q.jobs_key, q.deliveries_key, q.deadlines_key, q.owners_key, q.processing_key("w")):
        assert r.exists(key) == 0, key


# --------------------------------------------------------------------------- twins


@pytest.mark.parametrize(("sync", "twin", "core"), [
    (redisopt.reliable.ReliableQueue, redisopt.aio.reliable.ReliableQueue, ReliableCore),
    (redisopt.streamqueue.StreamQueue, redisopt.aio.streamqueue.StreamQueue, StreamCore),
])
def test_twins_have_the_sync_names_and_signatures(sync: type, twin: type, core: type) -> None:
    assert issubclass(sync, core) and issubclass(twin, core)
    assert "_scripts" not in vars(sync) and "_scripts" not in vars(twin)  # the core's Lua, registered once
    names = {n for n in vars(sync) if not n.startswith("_")}
    assert {n for n in vars(twin) if not n.startswith("_")} == names | {"length"}  # len(q) → await q.length()
    for name in vars(sync):
        if name.startswith("_"):
            continue
        assert inspect.signature(getattr(sync, name)) == inspect.signature(getattr(twin, name)), name
        assert inspect.iscoroutinefunction(getattr(twin, name)), name


def test_job_is_a_small_frozen_record() -> None:
    job = Job("1", {"x": 1}, 2, "c")
    with pytest.raises(AttributeError):
        job.id = "2"  # type: ignore[misc]
    assert job == Job("1", {"x": 1}, 2, "c")


def test_the_benchmark_figures_are_reported_and_leave_no_keys(r: redis.Redis) -> None:
    figures = redisopt.queuelab.reliable_figures(r, n=200, batch=50)
    assert {"reliable_claim_speedup", "reliable_claim_many_jobs_per_s", "reliable_claim_one_jobs_per_s",
            "raw_lmove_jobs_per_s"} <= set(figures)
    assert all(figures[k] > 0 for k in figures) and figures["reliable_claim_batch"] == 50
    assert r.scan(0, match="redisopt:bench:rq:*", count=1000)[1] == []
