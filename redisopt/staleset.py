"""The stale-set race of cache-aside, made to happen on demand (6장).

Cache-aside's write path is "update the database, then delete the cache entry". It still leaves
a stale value behind when a reader's load straddles the write: the reader misses, reads the
*old* row, the writer updates the row and deletes the cache entry (there is none yet), and then
the reader stores the old row — which now outlives the write until its TTL runs out. The window
is a few milliseconds, so in production it happens rarely and is never reproduced; here a
``GatedLoader`` holds the reader inside the window while the write lands, so it happens every time.

With ``stampede="none"`` the old value is stored; with ``"lock"`` or ``"xfetch"`` the reader's
lock is a lease that the invalidation deleted, so its store is refused (``redisopt.stampede``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from redisopt.cache import MISS, Cache
from redisopt.store import SQLiteStore

__all__ = ["GatedLoader", "StaleSetResult", "stale_set_race"]


class GatedLoader:
    """A loader that reads ``key`` from the store, sets ``read``, then waits for ``gate`` before
    returning what it read: the moment between a load's query and its cache write, held open."""

    def __init__(self, store: SQLiteStore, key: str, timeout: float = 10.0) -> None:
        self.store, self.key, self.timeout = store, key, timeout
        self.read = threading.Event()
        self.gate = threading.Event()

    def __call__(self) -> Any:
        value = self.store.get(self.key)
        self.read.set()
        if not self.gate.wait(self.timeout):
            raise TimeoutError(f"GatedLoader({self.key!r}): nobody opened the gate within {self.timeout} s")
        return value


@dataclass(frozen=True)
class StaleSetResult:
    """What the race left: the store's value, the cache's (None if the cache holds nothing), stale or not."""

    stampede: str
    reader_got: Any
    store_value: Any
    cached_value: Any
    stale: bool
    leases_lost: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stale_set_race(cache: Cache, key: str, old: Any = "v1", new: Any = "v2", timeout: float = 10.0) -> StaleSetResult:
    """Run the race once on ``cache`` (which needs a ``store``): a reader's load of ``old`` held open
    while a writer stores ``new`` and invalidates ``key``; then report what the cache keeps."""
    store = cache.store
    if store is None:
        raise ValueError("stale_set_race needs a cache with a store")
    store.put(key, old)
    cache.invalidate(key)
    lost_before = cache.stats["leases_lost"]
    loader = GatedLoader(store, key, timeout)
    got: list[Any] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            got.append(cache.get_or_load(key, loader))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=reader, name="stale-set-reader", daemon=True)
    thread.start()
    try:
        if not loader.read.wait(timeout):
            raise TimeoutError(f"the reader never loaded {key!r} (was it cached already?)")
        store.put(key, new)  # the writer: the database first,
        cache.invalidate(key)  # then the cache entry (there is none yet: the reader has not stored it)
    finally:
        loader.gate.set()
        thread.join(timeout)
    if errors:
        raise errors[0]
    cached = cache.get(key)
    current = store.get(key)
    return StaleSetResult(
        stampede=cache.stampede, reader_got=got[0] if got else None, store_value=current,
        cached_value=None if cached is MISS else cached,
        stale=cached is not MISS and cached != current,
        leases_lost=cache.stats["leases_lost"] - lost_before,
    )
