"""redisopt.aio.Cache: the sync Cache's API and logic (shared step generators), awaited, on a real server."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

import redisopt
import redisopt.aio
from redisopt.aio.cache import arun as drive
from redisopt.cache import MISS, CacheCore
from redisopt.steps import Steps, run


def arun(server: redisopt.Server, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """``body(client)`` in a fresh event loop with an asyncio client of ``server``, closed after."""
    async def main() -> Any:
        client = redisopt.aio.client_for(server)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _api(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_the_twin_has_the_sync_names_and_signatures() -> None:
    """Every public method has the sync signature; only ``flusher`` is sync-only (a flusher is a
    worker with its own sync client, whichever kind of client writes)."""
    assert issubclass(redisopt.Cache, CacheCore) and issubclass(redisopt.aio.Cache, CacheCore)
    assert _api(redisopt.Cache) - {"flusher"} == _api(redisopt.aio.Cache)
    for name in _api(redisopt.aio.Cache):
        sync, twin = getattr(redisopt.Cache, name), getattr(redisopt.aio.Cache, name)
        if callable(sync) and name not in vars(CacheCore):
            assert str(inspect.signature(sync)) == str(inspect.signature(twin)), name
            assert inspect.iscoroutinefunction(twin) != (name == "cached"), name


def traced(steps: Steps, seen: list[str]) -> Steps:
    """``steps``, noting the kind of each step it yields (no errors expected)."""
    reply = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value
        seen.append(type(step).__name__)
        reply = yield step


def test_both_twins_run_the_same_steps(r: redis.Redis, server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    """A cold miss under the lock guard: the same steps from either driver (one algorithm)."""
    sync_seen: list[str] = []
    cache = redisopt.Cache(r, ks.key("s"))
    assert run(r, traced(cache.get_or_load_steps("k", ("t",)), sync_seen), lambda: 1) == 1

    async def body(client: Any) -> list[str]:
        seen: list[str] = []
        twin = redisopt.aio.Cache(client, ks.key("a"))
        assert await drive(client, traced(twin.get_or_load_steps("k", ("t",)), seen), lambda: 1) == 1
        return seen

    assert arun(server, body) == sync_seen == ["Cmd", "Eval", "Load", "Eval"]


def test_100_coroutines_on_a_cold_key_cost_one_load(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> tuple[list[Any], int, dict[str, int]]:
        cache = redisopt.aio.Cache(client, ks.key("c"))
        loads = 0

        async def loader() -> dict[str, int]:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0.2)
            return {"id": 1}

        results = await asyncio.gather(*(cache.get_or_load("hot", loader) for _ in range(100)))
        return results, loads, cache.stats.snapshot()

    results, loads, stats = arun(server, body)
    assert results == [{"id": 1}] * 100 and loads == 1 and stats["fallback_loads"] == 0


def test_a_store_loader_runs_in_a_thread_and_still_loads_once(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    with redisopt.SQLiteStore(delay=0.2) as store:
        store.put("hot", [1, 2])
        store.reset_queries()

        async def body(client: Any) -> list[Any]:
            cache = redisopt.aio.Cache(client, ks.key("c"), store=store)
            return await asyncio.gather(*(cache.get_or_load("hot") for _ in range(100)))

        assert arun(server, body) == [[1, 2]] * 100
        assert store.queries == 1


def test_without_a_guard_coroutines_each_load(server: redisopt.Server, ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> int:
        cache = redisopt.aio.Cache(client, ks.key("c"), stampede="none")
        loads = 0

        async def loader() -> str:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0.2)
            return "v"

        await asyncio.gather(*(cache.get_or_load("hot", loader) for _ in range(100)))
        return loads

    assert arun(server, body) > 1


@pytest.mark.parametrize("stampede", ["none", "lock", "xfetch"])
def test_none_is_cached_and_writes_and_invalidation_work(server: redisopt.Server, r: redis.Redis,
                                                         ks: redisopt.KeySpace, stampede: str) -> None:
    with redisopt.SQLiteStore() as store:
        async def body(client: Any) -> None:
            cache = redisopt.aio.Cache(client, ks.key("c"), store=store, stampede=stampede, codec="msgpack")
            calls: list[int] = []
            assert await cache.get_or_load("n", lambda: calls.append(1)) is None
            assert await cache.get_or_load("n", lambda: calls.append(1)) is None and calls == [1]
            assert await cache.get("missing") is MISS
            await cache.write_through("w", {"a": True}, tags=["t"])
            assert store.get("w") == {"a": True} and await cache.get("w") == {"a": True}
            await cache.write_behind("b", False, tags=["t"])
            assert await cache.get("b") is False
            assert await cache.invalidate_tag("t") == 2 and await cache.get("w") is MISS
            await cache.set("p:1", 1)
            assert await cache.invalidate_pattern("p:*") == 1
            assert await cache.invalidate("n") and await cache.get("n") is MISS

            @cache.cached
            async def user(uid: int) -> dict[str, int]:
                calls.append(uid)
                return {"id": uid}

            assert await user(5) == await user(5) == {"id": 5} and calls == [1, 5]
            assert await user.invalidate(5)

        arun(server, body)
        assert redisopt.Cache(r, ks.key("c"), store=store, stampede=stampede).flusher().drain() == 1
        assert store.get("b") is False


def test_a_failing_async_loader_releases_the_lock(server: redisopt.Server, r: redis.Redis,
                                                  ks: redisopt.KeySpace) -> None:
    async def body(client: Any) -> None:
        cache = redisopt.aio.Cache(client, ks.key("c"))

        async def broken() -> None:
            raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await cache.get_or_load("k", broken)
        assert not await client.exists(cache.lock_key("k"))

    arun(server, body)
