"""The asyncio twin of ``redisopt.Cache``: the same step generators (``redisopt.cache.CacheCore``), awaited.

A hundred coroutines on a cold key is the natural way to fire a stampede from a notebook
(``asyncio.gather``); with ``stampede="lock"`` they cost one load. A loader may be a coroutine
function (awaited) or a plain function (run in a worker thread, so a slow database call does
not stop the event loop); the store's blocking calls run in a thread too.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio
from redis.client import NEVER_DECODE

from redisopt.cache import default_key
from redisopt.cachecore import MISS, CacheCore
from redisopt.steps import Call, Cmd, Eval, Load, Pipe, Sleep, Step, Steps

__all__ = ["Cache", "arun"]


def _options(raw: bool) -> dict[str, Any]:
    return {NEVER_DECODE: True} if raw else {}


async def _load(loader: Callable[[], Any]) -> Any:
    if inspect.iscoroutinefunction(loader) or inspect.iscoroutinefunction(getattr(loader, "func", None)):
        return await loader()
    value = await asyncio.to_thread(loader)
    return await value if inspect.isawaitable(value) else value


async def execute(client: redis.asyncio.Redis, step: Step, loader: Callable[[], Any] | None) -> Any:
    """Carry out one step on an asyncio client (``redisopt.steps.execute``'s twin)."""
    if isinstance(step, Cmd):
        return await client.execute_command(*step.args, **_options(step.raw))
    if isinstance(step, Pipe):
        async with client.pipeline(transaction=step.transaction) as pipe:
            for args in step.commands:
                pipe.execute_command(*args, **_options(step.raw and not step.transaction))
            return await pipe.execute()
    if isinstance(step, Eval):
        call = ("EVALSHA", step.script.sha, len(step.keys), *step.keys, *step.args)
        try:
            return await client.execute_command(*call, **_options(True))
        except redis.exceptions.NoScriptError:
            await client.script_load(step.script.script)
            return await client.execute_command(*call, **_options(True))
    if isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
        return None
    if isinstance(step, Load):
        if loader is None:
            raise TypeError("this cache has no store: get_or_load needs a loader")
        return await _load(loader)
    if isinstance(step, Call):
        return await asyncio.to_thread(step.fn, *step.args)
    raise TypeError(f"unknown step {step!r}")


async def arun(client: redis.asyncio.Redis, steps: Steps, loader: Callable[[], Any] | None = None) -> Any:
    """Drive ``steps`` to completion on an asyncio client (``redisopt.steps.run``'s twin)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        error = None
        try:
            reply = await execute(client, step, loader)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, re-raised there
            error, reply = exc, None


class Cache(CacheCore):
    """``redisopt.Cache`` over a ``redis.asyncio.Redis``: the same arguments, methods awaited."""

    async def get(self, key: str, default: Any = MISS) -> Any:
        return await arun(self.client, self.get_steps(key, default))

    async def get_or_load(self, key: str, loader: Callable[[], Any] | None = None, tags: Iterable[str] = ()) -> Any:
        if loader is None:
            store = self._need_store("get_or_load without a loader")
            loader = functools.partial(store.get, key)
        return await arun(self.client, self.get_or_load_steps(key, tags), loader)

    async def set(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        await arun(self.client, self.set_steps(key, value, tags))

    async def write_through(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        await arun(self.client, self.write_through_steps(key, value, tags))

    async def write_behind(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        await arun(self.client, self.write_behind_steps(key, value, tags))

    async def invalidate(self, key: str) -> bool:
        return await arun(self.client, self.invalidate_steps(key))

    async def invalidate_tag(self, tag: str) -> int:
        return await arun(self.client, self.invalidate_tag_steps(tag))

    async def invalidate_pattern(self, pattern: str) -> int:
        return await arun(self.client, self.invalidate_pattern_steps(pattern))

    def cached(self, fn: Callable[..., Any] | None = None, *, key: Callable[..., str] | None = None,
               tags: Iterable[str] = ()) -> Any:
        """Decorator for coroutine functions: ``@cache.cached`` or ``@cache.cached(key=..., tags=...)``."""
        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            make_key = key or default_key(func)

            @functools.wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.get_or_load(make_key(*args, **kwargs), functools.partial(func, *args, **kwargs), tags)

            async def invalidate(*args: Any, **kwargs: Any) -> bool:
                return await self.invalidate(make_key(*args, **kwargs))

            wrapper.invalidate = invalidate  # type: ignore[attr-defined]
            return wrapper

        return decorate(fn) if fn is not None else decorate
