"""Cache-aside, write-through and write-behind over a slow store, with stampede guards (6장).

``Cache(client, namespace, ttl=60.0, codec="orjson", stampede="lock", store=None)``:

- ``get_or_load(key, loader, tags=())`` — cache-aside: GET; on a miss one loader call (per the
  ``stampede`` guard, see ``redisopt.stampede``), its value stored for ``ttl`` seconds; also as a
  decorator, ``@cache.cached``. With a ``store`` the loader may be omitted (``store.get(key)``).
- ``write_through(key, value)`` — the store first, then the cache, under the key's lock (two
  writers cannot leave the cache holding the older value); ``write_behind(key, value)`` — the
  cache and a stream entry in one MULTI; ``WriteBehindFlusher`` drains the stream into the store.
- ``invalidate(key)``, ``invalidate_tag(tag)``, ``invalidate_pattern(glob)`` (SCAN + UNLINK,
  never KEYS: the article's mistake 3).

None and bools are values like any other: they go through the codec (``null``, ``true``), so a
cached None is a hit, distinct from a miss, and redis-py's DataError for SETEX with None (the
article's mistake 11) never arises. Keys under the namespace: ``v:<key>`` values, ``x:<key>``
XFetch values (``<delta µs>:`` + payload), ``l:<key>`` the key's lock/lease, ``t:<tag>`` tag sets,
``w`` the write-behind stream. Use one stampede mode per namespace.

Keyword options: ``lock_ttl`` (10 s) must exceed the slowest load — a load that outlives its lock
loses its lease and is not stored, and a waiter loads again; ``wait`` (10 s; None without limit,
0 not at all) bounds how long a miss waits for another caller's load before loading itself;
``beta`` (1.0) is XFetch's eagerness. Values written by ``set``/``write_*`` carry no recompute
time, so XFetch refreshes them at expiry, through single flight.

All the logic is in ``CacheCore``'s step generators (``redisopt.cachecore``), shared with the
asyncio twin ``redisopt.aio.Cache``; this class only runs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from redisopt.cachecore import MISS, CacheCore, CacheStats
from redisopt.steps import run

__all__ = ["MISS", "Cache", "CacheCore", "CacheStats", "default_key"]


def default_key(fn: Callable[..., Any]) -> Callable[..., str]:
    """``get_user(1)``-style keys from the function's name (``Class.method`` for a method) and its
    arguments' reprs."""
    name = fn.__qualname__.rsplit("<locals>.", 1)[-1]

    def make(*args: Any, **kwargs: Any) -> str:
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())]
        return f"{name}({', '.join(parts)})"
    return make


class Cache(CacheCore):
    """The cache over a sync ``redis.Redis``; see the module docstring. Safe to share between threads."""

    def get(self, key: str, default: Any = MISS) -> Any:
        """The cached value, or ``default`` (MISS) on a miss; no loader, no stats."""
        return run(self.client, self.get_steps(key, default))

    def get_or_load(self, key: str, loader: Callable[[], Any] | None = None, tags: Iterable[str] = ()) -> Any:
        """The cached value, or ``loader()``'s, stored for ``ttl`` seconds (see ``stampede``)."""
        if loader is None:
            store = self._need_store("get_or_load without a loader")
            loader = functools.partial(store.get, key)
        return run(self.client, self.get_or_load_steps(key, tags), loader)

    def set(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        """Cache ``value`` (not the store); a load in flight for ``key`` will not overwrite it."""
        run(self.client, self.set_steps(key, value, tags))

    def write_through(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        run(self.client, self.write_through_steps(key, value, tags))

    def write_behind(self, key: str, value: Any, tags: Iterable[str] = ()) -> None:
        run(self.client, self.write_behind_steps(key, value, tags))

    def invalidate(self, key: str) -> bool:
        return run(self.client, self.invalidate_steps(key))

    def invalidate_tag(self, tag: str) -> int:
        return run(self.client, self.invalidate_tag_steps(tag))

    def invalidate_pattern(self, pattern: str) -> int:
        return run(self.client, self.invalidate_pattern_steps(pattern))

    def cached(self, fn: Callable[..., Any] | None = None, *, key: Callable[..., str] | None = None,
               tags: Iterable[str] = ()) -> Any:
        """Decorator: ``@cache.cached`` or ``@cache.cached(key=lambda uid: f"user:{uid}", tags=...)``;
        the wrapper's ``.invalidate(*args)`` drops one entry. The default key is ``name(args…)``
        from the arguments' reprs: give methods a ``key`` (``self``'s repr is no key)."""
        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            make_key = key or default_key(func)

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.get_or_load(make_key(*args, **kwargs), functools.partial(func, *args, **kwargs), tags)

            wrapper.invalidate = lambda *a, **kw: self.invalidate(make_key(*a, **kw))  # type: ignore[attr-defined]
            return wrapper

        return decorate(fn) if fn is not None else decorate

    def flusher(self, **options: Any) -> Any:
        """A ``WriteBehindFlusher`` for this cache's stream, store and codec."""
        from redisopt.writebehind import WriteBehindFlusher

        return WriteBehindFlusher(self.client, self.prefix, self._need_store("a flusher"), self.codec, **options)
