"""A lock with a fencing token: SET NX PX with a random token, released and extended only by its owner.

Why more than ``SET NX``: a holder can pause (GC, swap, a slow disk) past its TTL while another
client takes the lock; its late DEL would then free someone else's lock (the article's mistake 2),
and its late write would land on top of the new holder's. So release and extend compare the token
first (one Lua script, or the server's own conditional command where it has one: Valkey 9.0
DELIFEQ, Redis 8.4 DELEX, SET IFEQ in Valkey 8.1 and Redis 8.4), and every acquire also hands out
a fencing token from INCR, strictly increasing per lock name, that a protected resource checks
(``FencedResource``) so an expired holder's write is refused (Kleppmann, "How to do distributed
locking", 2016); see ``redisopt.fencing``. Chapter 5 (5장) measures both release paths side by side.

Everything that is not I/O (script text, keys, arguments, reply → error, checks, backoff) lives in
``redisopt.lockcore``, shared with the asyncio twin ``redisopt.aio.Lock``, which only adds
``await``; which release/extend path a server allows is ``redisopt.lockstrategy``.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import redis

from redisopt.errors import LockNotOwnedError
from redisopt.lockcore import (  # noqa: F401 - the shared pieces, importable from here as before
    _UNSET,
    SCRIPTS,
    LockCore,
    _exit_note,
    _ms,
    _not_owned,
    _Unset,
    acquire_outcome,
    extend_outcome,
    fencing_key,
    hash_tag,
)
from redisopt.lockstrategy import LUA_ONLY, LockStrategy, _parse_capabilities, choose_strategy, detect  # noqa: F401

__all__ = ["Lock", "LockCore", "LockStrategy", "lock_capabilities"]


def lock_capabilities(client: redis.Redis) -> frozenset[str]:
    """The conditional commands this server has among DELIFEQ, DELEX and SET IFEQ, detected from
    the command table, never from a version number.

    One round trip, once per connection pool, which also loads the lock's scripts: the first
    acquire + release is then 2 round trips like every later one (no NOSCRIPT, SCRIPT LOAD).
    """
    return detect(client, SCRIPTS)


# --------------------------------------------------------------------------- the lock


class Lock(LockCore):
    """``Lock(client, name, ttl=10.0)``: ``acquire()`` returns a fencing token or raises LockTimeout.

    Timeouts follow Python: None waits without limit, 0 tries once, t waits up to t seconds.
    ``with Lock(r, "job") as token:`` acquires with ``timeout`` and releases on exit. With
    ``auto_renew=True`` a daemon thread extends the lock every ``renew_every`` seconds (ttl/3) at
    most ``max_renewals`` times, then stops: a holder stuck forever still loses the lock.
    ``strategy`` is "auto" (native commands where the server has them), "lua" or "native";
    ``lock.strategy`` says which path is used.

    ``fencing=False``: a plain SET NX PX, no INCR, so no per-name counter key is ever created
    (e.g. a cache's single-flight lock over many keys); ``acquire()`` then returns 0, which no
    ``FencedResource`` accepts. Still 2 round trips for acquire + release.
    """

    def __init__(self, client: redis.Redis, name: str, ttl: float = 10.0, *, timeout: float | None = None,
                 sleep: float = 0.002, max_sleep: float = 0.1, auto_renew: bool = False,
                 renew_every: float | None = None, max_renewals: int = 100, strategy: str = "auto",
                 fencing: bool = True) -> None:
        super().__init__(client, name, ttl, timeout=timeout, sleep=sleep, max_sleep=max_sleep,
                         auto_renew=auto_renew, renew_every=renew_every, max_renewals=max_renewals,
                         strategy=strategy, fencing=fencing)
        self.strategy = choose_strategy(lock_capabilities(client), strategy)
        self._renewer: _Renewer | None = None

    def acquire(self, timeout: float | None | _Unset = _UNSET) -> int:
        """Take the lock and return its fencing token; LockTimeout when ``timeout`` runs out first.

        The token is >= 1, strictly increasing per name; 0 when the lock was made with
        ``fencing=False`` (no counter, no token). ``timeout`` defaults to the one given to the
        constructor (None: wait without limit).
        """
        timeout, token, deadline = self._begin(timeout)
        while True:
            self.attempts += 1
            fence = self.do_acquire(token)
            if fence is not None:
                self._held(token, fence)
                if self.auto_renew:
                    self._renewer = _Renewer(self)
                    self._renewer.start()
                return fence
            time.sleep(self._next_pause(deadline, timeout))

    def release(self) -> None:
        """Free the lock if it is still ours; LockNotOwnedError if it expired or never was ours."""
        renewer, self._renewer = self._renewer, None
        renewal_error = renewer.stop() if renewer is not None else None
        token = self._give_up_token()
        if not self.do_release(token):
            raise _not_owned(self.name, "release", never=False) from renewal_error

    def extend(self, ttl: float | None = None) -> None:
        """Set the lock's remaining time to ``ttl`` seconds (default: its ttl), if it is still ours."""
        token, ttl_ms = self._extend_args(ttl)
        if not self.do_extend(token, ttl_ms):
            raise _not_owned(self.name, "extend", never=False)

    def locked(self) -> bool:
        """Is the lock held by anyone right now (one EXISTS)?"""
        return bool(self.client.exists(self.key))

    @property
    def owned(self) -> bool:
        """Is it still ours (one GET)? Only a hint: it can expire right after."""
        return self.token is not None and self._is_ours(self.client.get(self.key))

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self.release()
        except LockNotOwnedError as lost:
            _exit_note(lost, exc)

    # ----- one round trip each: the hooks a chapter (or the async twin) replaces

    def _send(self, step: str, token: str, ttl_ms: int | None = None) -> Any:
        script, call = self._call(step, token, ttl_ms)
        if script is not None:
            return script(keys=call[0], args=call[1], client=self.client)
        return self.client.execute_command(*call)

    def do_acquire(self, token: str) -> int | None:
        """The fencing token (>= 1; 0 without fencing), or None while someone else holds the lock."""
        return acquire_outcome(self.fencing, self._send("acquire", token))

    def do_release(self, token: str) -> bool:
        return bool(self._send("release", token))  # 1/0 from DEL, DELIFEQ, DELEX alike

    def do_extend(self, token: str, ttl_ms: int) -> bool:
        return extend_outcome(self._send("extend", token, ttl_ms))


class _Renewer:
    """Extends a held lock every ``renew_every`` s, at most ``max_renewals`` times.

    Holds only a weakref to the lock (a forgotten Lock is collected and its thread ends), paced by
    ``Event.wait`` (the sleep is the stop signal), daemon, joined by ``release``.
    """

    def __init__(self, lock: Lock) -> None:
        self._lock = weakref.ref(lock)
        self._token = lock.token
        self._every = lock.renew_every
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"lock-renewer:{lock.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            lock = self._lock()
            if lock is None or not lock._renewal_due(self._token):
                return  # collected, released, or at its cap: from here the TTL runs out by itself
            try:
                if not lock.do_extend(self._token, _ms(lock.ttl)):  # type: ignore[arg-type]
                    return  # lost already: nothing left to renew
                lock.renewals += 1
            except BaseException as exc:  # noqa: BLE001 - handed to release(), which re-raises
                self.error = exc
                return
            finally:
                del lock

    def stop(self) -> BaseException | None:
        """Stop and join; returns what the thread raised, if anything."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join()
        return self.error
