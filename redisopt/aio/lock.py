"""The asyncio twin of ``redisopt.Lock`` (chapter 5, 5장): same scripts, keys, arguments and errors.

Everything but the sending is ``redisopt.lockcore.LockCore`` (checks, keys, each step's wire
call, reply → outcome, backoff) and ``redisopt.lockstrategy`` (the server's conditional
commands), so the two cannot drift. Differences forced by asyncio:

- ``async with Lock(...) as token``; ``await`` on acquire, release, extend, locked and owned
  (``owned`` is a method here: a property cannot wait for a reply);
- a constructor cannot wait, so the server's commands are probed (and the scripts loaded) by the
  first awaited call, once per connection pool; ``lock.strategy`` is None until then;
- auto-renewal is an asyncio task (same pace, same cap, a weakref to the lock), awaited by release.

Cancelling ``acquire`` mid-call can leave the lock taken with nobody knowing its token; its TTL
frees it, as for a client that crashes.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, ClassVar

import redis.asyncio
from redis.commands.core import AsyncScript

from redisopt.errors import LockNotOwnedError
from redisopt.lockcore import (
    _UNSET,
    SCRIPTS,
    LockCore,
    _exit_note,
    _ms,
    _not_owned,
    _Unset,
    acquire_outcome,
    extend_outcome,
)
from redisopt.lockstrategy import cached, choose_strategy, probe_result, queue_probe

__all__ = ["Lock", "lock_capabilities"]

_renewals: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks


async def lock_capabilities(client: redis.asyncio.Redis) -> frozenset[str]:
    """``redisopt.lock.lock_capabilities`` for an asyncio client: the same probe, the same replies
    parsed the same way, one round trip per connection pool, loading the lock's scripts."""
    found = cached(client.connection_pool)
    if found is not None:
        return found
    pipe = client.pipeline(transaction=False)
    queue_probe(pipe, SCRIPTS)
    return probe_result(client.connection_pool, await pipe.execute(raise_on_error=False))


def _async_twin(script: Any) -> AsyncScript:
    """The shared (unbound) Script as an AsyncScript, bound to no client either: the same text and
    SHA1, called with ``client=``, reloaded on NOSCRIPT."""
    return AsyncScript(script.registered_client, script.script)


class Lock(LockCore):
    """``Lock(client, name, ttl=10.0)`` on a ``redis.asyncio`` client: ``await lock.acquire()`` returns
    a fencing token (0 with ``fencing=False``) or raises LockTimeout; ``async with`` releases.

    Parameters and semantics are ``redisopt.Lock``'s (see its docstring), timeouts included:
    None waits without limit, 0 tries once, t waits up to t seconds.
    """

    _async_scripts: ClassVar[dict[str, AsyncScript]] = {}  # by SHA1 of the shared scripts

    def __init__(self, client: redis.asyncio.Redis, name: str, ttl: float = 10.0, *, timeout: float | None = None,
                 sleep: float = 0.002, max_sleep: float = 0.1, auto_renew: bool = False,
                 renew_every: float | None = None, max_renewals: int = 100, strategy: str = "auto",
                 fencing: bool = True) -> None:
        super().__init__(client, name, ttl, timeout=timeout, sleep=sleep, max_sleep=max_sleep,
                         auto_renew=auto_renew, renew_every=renew_every, max_renewals=max_renewals,
                         strategy=strategy, fencing=fencing)
        self._renewer: _Renewer | None = None
        if not Lock._async_scripts:
            Lock._async_scripts = {s.sha: _async_twin(s) for s in self._scripts.values()}

    async def _ready(self) -> None:
        """Choose the strategy on first use (the constructor cannot await the probe)."""
        if self.strategy is None:
            self.strategy = choose_strategy(await lock_capabilities(self.client), self._strategy_choice)

    async def acquire(self, timeout: float | None | _Unset = _UNSET) -> int:
        """Take the lock and return its fencing token (0 with ``fencing=False``); LockTimeout when
        ``timeout`` (default: the constructor's) runs out first."""
        timeout, token, deadline = self._begin(timeout)
        await self._ready()
        while True:
            self.attempts += 1
            fence = await self.do_acquire(token)
            if fence is not None:
                self._held(token, fence)
                if self.auto_renew:
                    self._renewer = _Renewer(self)
                return fence
            await asyncio.sleep(self._next_pause(deadline, timeout))

    async def release(self) -> None:
        """Free the lock if it is still ours; LockNotOwnedError if it expired or never was ours."""
        renewer, self._renewer = self._renewer, None
        renewal_error = await renewer.stop() if renewer is not None else None
        token = self._give_up_token()
        await self._ready()
        if not await self.do_release(token):
            raise _not_owned(self.name, "release", never=False) from renewal_error

    async def extend(self, ttl: float | None = None) -> None:
        """Set the lock's remaining time to ``ttl`` seconds (default: its ttl), if it is still ours."""
        token, ttl_ms = self._extend_args(ttl)
        await self._ready()
        if not await self.do_extend(token, ttl_ms):
            raise _not_owned(self.name, "extend", never=False)

    async def locked(self) -> bool:
        """Is the lock held by anyone right now (one EXISTS)?"""
        return bool(await self.client.exists(self.key))

    async def owned(self) -> bool:
        """Is it still ours (one GET)? Only a hint: it can expire right after."""
        return self.token is not None and self._is_ours(await self.client.get(self.key))

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            await self.release()
        except LockNotOwnedError as lost:
            _exit_note(lost, exc)

    # ----- one round trip each, as in the sync Lock

    async def _send(self, step: str, token: str, ttl_ms: int | None = None) -> Any:
        script, call = self._call(step, token, ttl_ms)
        if script is not None:
            return await self._async_scripts[script.sha](keys=call[0], args=call[1], client=self.client)
        return await self.client.execute_command(*call)

    async def do_acquire(self, token: str) -> int | None:
        """The fencing token (>= 1; 0 without fencing), or None while someone else holds the lock."""
        return acquire_outcome(self.fencing, await self._send("acquire", token))

    async def do_release(self, token: str) -> bool:
        return bool(await self._send("release", token))  # 1/0 from DEL, DELIFEQ, DELEX alike

    async def do_extend(self, token: str, ttl_ms: int) -> bool:
        return extend_outcome(await self._send("extend", token, ttl_ms))


class _Renewer:
    """Extends a held lock every ``renew_every`` s, at most ``max_renewals`` times: an asyncio task.

    As the sync renewal thread: a weakref to the lock (a forgotten Lock is collected and the task
    ends), paced by waiting on an Event (the sleep is the stop signal, so an extend in flight is
    finished, never cancelled half-way), awaited by ``release``.
    """

    def __init__(self, lock: Lock) -> None:
        self._lock = weakref.ref(lock)
        self._token = lock.token
        self._every = lock.renew_every
        self._stop = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"lock-renewer:{lock.name}")
        _renewals.add(self.task)
        self.task.add_done_callback(_renewals.discard)

    async def _stopped(self) -> bool:
        try:
            async with asyncio.timeout(self._every):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while not await self._stopped():
            lock = self._lock()
            if lock is None or not lock._renewal_due(self._token):
                return  # collected, released, or at its cap: from here the TTL runs out by itself
            try:
                if not await lock.do_extend(self._token, _ms(lock.ttl)):  # type: ignore[arg-type]
                    return  # lost already: nothing left to renew
                lock.renewals += 1
            except Exception as exc:  # noqa: BLE001 - handed to release(), which re-raises
                self.error = exc
                return
            finally:
                del lock

    async def stop(self) -> BaseException | None:
        """Stop and wait for the task; returns what it raised, if anything."""
        self._stop.set()
        if self.task is not asyncio.current_task():
            await self.task
        return self.error
