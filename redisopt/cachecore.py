"""What a Cache does besides I/O, shared by ``redisopt.Cache`` and ``redisopt.aio.Cache`` (6장).

Checks, key names, payloads (the codec's bytes; under XFetch behind ``<delta µs>:``), the stats,
and every operation as a step generator (``redisopt.steps``): a sync or an asyncio driver runs
it, so the two caches cannot drift. What each operation does and why: ``redisopt.cache``;
the stampede guards and leases: ``redisopt.stampede``.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from redisopt.codecs import Codec, get_codec
from redisopt.errors import LockTimeout, check_timeout
from redisopt.keyspace import KeySpace, _escape_glob
from redisopt.lockcore import RELEASE_LUA, acquire_command
from redisopt.scripts import unbound_script
from redisopt.stampede import COMMIT, GET_OR_LOCK, POLL_FIRST, STAMPEDES, backoff, xfetch_due
from redisopt.steps import Call, Cmd, Eval, Load, Pipe, Sleep, Steps
from redisopt.store import SQLiteStore

__all__ = ["MISS", "CacheCore", "CacheStats"]

RELEASE = unbound_script(RELEASE_LUA)
SCAN_COUNT = 1_000
UNLINK_BATCH = 500


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS: Any = _Miss()  # what ``get`` returns for a miss unless told otherwise: None is a value


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


class CacheStats:
    """Counters, safe across threads: hits, misses, loads (this cache's loader calls), waits (requests
    that waited for another's load), fallback_loads (a waiter past ``wait``), early_refreshes
    (XFetch), leases_lost (a load not stored: its key was invalidated or rewritten meanwhile)."""

    NAMES = ("hits", "misses", "loads", "waits", "fallback_loads", "early_refreshes", "leases_lost")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: self._counts[name] for name in self.NAMES}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def __repr__(self) -> str:
        return f"CacheStats({self.snapshot()})"


class CacheCore:
    """Checks, keys, encoding and every operation as a step generator (no I/O), for both twins."""

    def __init__(self, client: Any, namespace: str | KeySpace, ttl: float = 60.0, codec: str | Codec = "orjson",
                 stampede: str = "lock", store: SQLiteStore | None = None, *, beta: float = 1.0,
                 lock_ttl: float = 10.0, wait: float | None = 10.0) -> None:
        if stampede not in STAMPEDES:
            raise ValueError(f"unknown stampede guard {stampede!r}; choose one of {', '.join(map(repr, STAMPEDES))}")
        self.client = client
        self.prefix = namespace.prefix if isinstance(namespace, KeySpace) else str(namespace)
        if not self.prefix:
            raise ValueError("namespace must not be empty")
        self.ttl = _seconds("ttl", ttl)
        self.codec = get_codec(codec)
        self.stampede = stampede
        self.store = store
        self.beta = _seconds("beta", beta)
        self.lock_ttl = _seconds("lock_ttl", lock_ttl)
        self.wait = check_timeout(wait)
        self.stats = CacheStats()

    # ----- keys

    def value_key(self, key: str) -> str:
        """Where ``key``'s value lives: ``<ns>:v:<key>``, or ``<ns>:x:<key>`` with XFetch's delta."""
        return f"{self.prefix}:{'x' if self.stampede == 'xfetch' else 'v'}:{key}"

    def lock_key(self, key: str) -> str:
        return f"{self.prefix}:l:{key}"

    def tag_key(self, tag: str) -> str:
        return f"{self.prefix}:t:{tag}"

    @property
    def stream_key(self) -> str:
        """The write-behind stream (``WriteBehindFlusher`` drains it)."""
        return f"{self.prefix}:w"

    def _all_keys(self, key: str) -> tuple[str, str, str]:
        return f"{self.prefix}:v:{key}", f"{self.prefix}:x:{key}", self.lock_key(key)

    # ----- payloads

    def _payload(self, value: Any, delta: float = 0.0) -> bytes:
        """The stored bytes: the codec's, behind ``<delta µs>:`` under XFetch."""
        data = self.codec.encode(value)
        return b"%d:" % round(delta * 1e6) + data if self.stampede == "xfetch" else data

    def _split(self, stored: bytes) -> tuple[float, bytes]:
        if self.stampede != "xfetch":
            return 0.0, stored
        head, _, data = stored.partition(b":")
        return int(head) / 1e6, data

    def _decode(self, stored: bytes) -> Any:
        return self.codec.decode(self._split(stored)[1])

    def _tag_commands(self, key: str, tags: Iterable[str]) -> list[tuple[Any, ...]]:
        """SADD, then an expiry no shorter than the value's (NX: the set had none; GT: ours is longer)."""
        ms = _ms(self.ttl)
        out: list[tuple[Any, ...]] = []
        for tag in tags:
            tkey = self.tag_key(tag)
            out += [("SADD", tkey, key), ("PEXPIRE", tkey, ms, "NX"), ("PEXPIRE", tkey, ms, "GT")]
        return out

    # ----- reads

    def _get(self, key: str) -> Steps:
        """(hit, stored bytes or None, remaining seconds or None): GET, plus PTTL under XFetch."""
        vkey = self.value_key(key)
        if self.stampede == "xfetch":
            stored, pttl = yield Pipe((("GET", vkey), ("PTTL", vkey)), raw=True)
            return stored, (pttl / 1000 if pttl is not None and pttl > 0 else None)
        stored = yield Cmd(("GET", vkey), raw=True)
        return stored, None

    def get_steps(self, key: str, default: Any) -> Steps:
        stored, _ = yield from self._get(key)
        return default if stored is None else self._decode(stored)

    def get_or_load_steps(self, key: str, tags: Iterable[str] = ()) -> Steps:
        tags = tuple(tags)
        stored, remaining = yield from self._get(key)
        if stored is not None:
            self.stats.add("hits")
            delta, data = self._split(stored)
            if remaining is not None and xfetch_due(delta, remaining, self.beta):
                return (yield from self._refresh_early(key, tags, data))
            return self.codec.decode(data)
        self.stats.add("misses")
        if self.stampede == "none":
            value, delta = yield from self._load()
            yield from self._set(key, self._payload(value, delta), tags, lease=False)
            return value
        return (yield from self._single_flight(key, tags))

    def _load(self) -> Steps:
        """(value, seconds it took): the caller's loader, once."""
        self.stats.add("loads")
        started = time.perf_counter()
        value = yield Load()
        return value, time.perf_counter() - started

    def _single_flight(self, key: str, tags: tuple[str, ...]) -> Steps:
        deadline = None if self.wait is None else time.monotonic() + self.wait
        pause, waited = POLL_FIRST, False
        lock_ms = _ms(self.lock_ttl)
        while True:
            token = secrets.token_hex(16)
            found, reply = yield Eval(GET_OR_LOCK, (self.value_key(key), self.lock_key(key)), (token, lock_ms))
            if found:
                return self._decode(reply)
            if reply:
                return (yield from self._load_and_commit(key, token, tags))
            if not waited:
                self.stats.add("waits")
                waited = True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                # Never None (mistake 10): past the deadline, load it ourselves (not stored: we hold no lease).
                self.stats.add("fallback_loads")
                return (yield from self._load())[0]
            sleep, pause = backoff(pause)
            yield Sleep(sleep if left is None else min(sleep, left))

    def _refresh_early(self, key: str, tags: tuple[str, ...], data: bytes) -> Steps:
        """XFetch said "recompute now": do it if nobody else is (lock, no wait), else serve ``data``."""
        token = secrets.token_hex(16)
        if not (yield Cmd(acquire_command(self.lock_key(key), token, _ms(self.lock_ttl)))):
            return self.codec.decode(data)
        self.stats.add("early_refreshes")
        return (yield from self._load_and_commit(key, token, tags))

    def _load_and_commit(self, key: str, token: str, tags: tuple[str, ...]) -> Steps:
        """Holding the key's lock: load, then store under the lease (``COMMIT``), or release on error."""
        try:
            value, delta = yield from self._load()
            payload = self._payload(value, delta)
        except BaseException:
            yield Eval(RELEASE, (self.lock_key(key),), (token,))
            raise
        yield from self._commit(key, token, payload, tags)
        return value

    def _commit(self, key: str, token: str, payload: bytes, tags: tuple[str, ...]) -> Steps:
        keys = (self.lock_key(key), self.value_key(key), *(self.tag_key(t) for t in tags))
        if not (yield Eval(COMMIT, keys, (token, payload, _ms(self.ttl), key))):
            self.stats.add("leases_lost")

    # ----- writes

    def _set(self, key: str, payload: bytes, tags: Iterable[str], extra: tuple[tuple[Any, ...], ...] = (),
             *, lease: bool = True) -> Steps:
        """SET with TTL (one MULTI with ``extra`` and the tags). ``lease``: DEL the key's lock too, so a
        load in flight, which read the value this write replaces, cannot store it afterwards."""
        first = ("SET", self.value_key(key), payload, "PX", _ms(self.ttl))
        rest = (*extra, *((("DEL", self.lock_key(key)),) if lease else ()), *self._tag_commands(key, tags))
        if rest:
            yield Pipe((first, *rest), transaction=True)
        else:
            yield Cmd(first)  # "none" without tags: the plain cache-aside SET

    def set_steps(self, key: str, value: Any, tags: Iterable[str] = ()) -> Steps:
        yield from self._set(key, self._payload(value), tags)

    def write_behind_steps(self, key: str, value: Any, tags: Iterable[str] = ()) -> Steps:
        payload = self.codec.encode(value)
        entry = ("XADD", self.stream_key, "*", "k", key, "v", payload, "c", self.codec.name)
        yield from self._set(key, self._payload(value) if self.stampede == "xfetch" else payload, tags, (entry,))

    def write_through_steps(self, key: str, value: Any, tags: Iterable[str] = ()) -> Steps:
        """Lock the key (waiting up to ``lock_ttl``), write the store, then the cache under the lease."""
        store = self._need_store("write_through")
        payload, tags = self._payload(value), tuple(tags)
        token = secrets.token_hex(16)
        deadline, pause = time.monotonic() + self.lock_ttl, POLL_FIRST
        while not (yield Cmd(acquire_command(self.lock_key(key), token, _ms(self.lock_ttl)))):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(f"write_through: the lock of cache key {key!r} stayed held for "
                                  f"{self.lock_ttl} s", name=self.lock_key(key))
            sleep, pause = backoff(pause)
            yield Sleep(min(sleep, left))
        try:
            yield Call(store.put, (key, value))
        except BaseException:
            yield Eval(RELEASE, (self.lock_key(key),), (token,))
            raise
        yield from self._commit(key, token, payload, tags)

    def _need_store(self, what: str) -> SQLiteStore:
        if self.store is None:
            raise ValueError(f"{what} needs a store: Cache(..., store=SQLiteStore(...))")
        return self.store

    # ----- invalidation

    def invalidate_steps(self, key: str) -> Steps:
        """UNLINK the value and the lock (cancelling the lease of a load in flight)."""
        removed = yield Cmd(("UNLINK", *self._all_keys(key)))
        return bool(removed)

    def invalidate_tag_steps(self, tag: str) -> Steps:
        """Take the tag's members and drop the set atomically (MULTI), then UNLINK their keys."""
        members, _ = yield Pipe((("SMEMBERS", self.tag_key(tag)), ("UNLINK", self.tag_key(tag))), transaction=True)
        keys = [k for m in sorted(map(_text, members)) for k in self._all_keys(m)]
        for i in range(0, len(keys), UNLINK_BATCH):
            yield Cmd(("UNLINK", *keys[i:i + UNLINK_BATCH]))
        return len(members)

    def invalidate_pattern_steps(self, pattern: str) -> Steps:
        """SCAN for ``v:``, ``x:`` and ``l:`` keys whose cache key matches ``pattern`` (a glob), UNLINK
        each page; returns how many values were removed. Never KEYS: it blocks the server."""
        match = f"{_escape_glob(self.prefix)}:[vxl]:{pattern}"
        lock_part = f"{self.prefix}:l:"
        cursor, removed = 0, 0
        while True:
            cursor, keys = yield Cmd(("SCAN", cursor, "MATCH", match, "COUNT", SCAN_COUNT))
            if keys:
                yield Cmd(("UNLINK", *keys))
                removed += sum(1 for k in keys if not _text(k).startswith(lock_part))
            if int(cursor) == 0:
                return removed

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.prefix!r}, ttl={self.ttl}, codec={self.codec.name!r}, "
                f"stampede={self.stampede!r})")
