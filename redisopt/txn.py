"""Optimistic updates: WATCH/MULTI/EXEC with bounded, reported retries, and the same update in Lua (5장).

A read-modify-write (read a value, compute in Python, write the result) loses updates when two
clients interleave. WATCH makes it optimistic: EXEC is refused (a nil reply, ``WatchError`` in
redis-py) if a watched key changed since WATCH, and the caller reads again and retries. Two things
make it correct, and the article's examples (DESIGN §7 mistake 5, ``article_watch_add``) miss both:

* WATCH, the read and MULTI/EXEC must run on **one connection**: WATCH is a property of the
  connection. A pooled client gives each command whichever connection is free, so WATCH sent
  through ``client`` guards nothing the later ``client.pipeline()`` does. A transaction pipeline
  holds one connection from ``watch()`` to ``execute()`` — that is what ``transact`` uses.
* Retries must be **bounded and reported**: under contention a retry can lose again, and an
  unbounded loop turns overload into a hang. ``transact`` raises ``RetryLimitExceeded`` after
  ``max_retries`` and returns how many retries it took.

A Lua script does the same update inside the server, which runs it without interleaving: no WATCH,
no retries, one round trip — at the price of moving the computation into Lua.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from redisopt.errors import RetryLimitExceeded
from redisopt.scripts import unbound_script

__all__ = [
    "MAX_RETRIES", "SharedCounter", "TxnResult", "article_watch_add", "exec_replies", "sequence_gaps", "transact",
]

MAX_RETRIES = 100


@dataclass(frozen=True)
class TxnResult:
    """What an optimistic update returned, and how many times it had to start over."""

    value: Any  # what the update function returned (the new value, for SharedCounter)
    retries: int  # EXECs refused because a watched key changed (0 = first try went through)
    replies: list[Any] = field(default_factory=list)  # EXEC's replies

    @property
    def attempts(self) -> int:
        return self.retries + 1


def check_retry_args(max_retries: int, backoff: float) -> None:
    """Validate before anything is sent (shared with an async twin)."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0 (retries are bounded), not {max_retries!r}")
    if not backoff >= 0:
        raise ValueError(f"backoff must be >= 0 seconds, not {backoff!r}")


def retry_delay(backoff: float, retries: int) -> float:
    """Full jitter: up to ``backoff`` × 2^retries (capped at 64×), so retrying clients spread out."""
    return random.uniform(0, backoff * 2 ** min(retries, 6)) if backoff > 0 else 0.0


def transact(
    client: redis.Redis,
    func: Callable[[Pipeline], Any],
    *watches: str,
    max_retries: int = MAX_RETRIES,
    backoff: float = 0.0,
) -> TxnResult:
    """Run ``func(pipe)`` as an optimistic transaction on ONE connection; retry on conflict, bounded.

    ``func`` reads with the pipeline in immediate mode (``pipe.get(k)`` returns the value), then
    calls ``pipe.multi()`` and queues its writes; EXEC runs them only if no key in ``watches``
    changed since WATCH. Unlike redis-py's ``client.transaction``, which retries forever, this gives
    up after ``max_retries`` retries with RetryLimitExceeded, and reports the retries it took.
    ``backoff`` > 0 sleeps a random time (full jitter, doubling per retry) before each retry.
    """
    check_retry_args(max_retries, backoff)
    if not watches:
        raise ValueError("transact() needs at least one key to WATCH")
    with client.pipeline(transaction=True) as pipe:
        for retries in range(max_retries + 1):
            try:
                pipe.watch(*watches)
                value = func(pipe)
                replies = pipe.execute()
                return TxnResult(value=value, retries=retries, replies=replies)
            except redis.exceptions.WatchError:
                pipe.reset()
                if retries < max_retries:
                    time.sleep(retry_delay(backoff, retries))
    raise retry_limit_error(watches, max_retries + 1)


def retry_limit_error(watches: tuple[str, ...], attempts: int) -> RetryLimitExceeded:
    """The error after the last refused EXEC (shared with an async twin)."""
    return RetryLimitExceeded(
        f"optimistic update of {', '.join(watches)} gave up after {attempts} attempts: every EXEC "
        "was refused because another client changed a watched key first. Raise max_retries, add "
        "backoff, or do the update in one Lua script (no retries at all)",
        keys=tuple(watches), attempts=attempts,
    )


class SharedCounter:
    """A plain GET/SET counter updated by read-modify-write: racy, with WATCH, or in one Lua script.

    The update is deliberately computed by the client (read, add in Python, write back): it stands
    for any update Redis has no single command for. For a real counter, INCRBY is the answer.
    """

    # KEYS[1]: the counter (a string holding an integer; missing counts as 0)
    # ARGV[1]: the amount to add (an integer)
    # returns: the new value
    ADD_LUA = """
local value = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
redis.call('SET', KEYS[1], value)
return value
"""

    _script: ClassVar[Script | None] = None  # registered once per class, called with client=

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client, self.key = client, key
        if SharedCounter._script is None:
            SharedCounter._script = unbound_script(self.ADD_LUA)

    def read(self) -> int:
        return int(self.client.get(self.key) or 0)

    def add_racy(self, amount: int = 1) -> int:
        """GET, add, SET with nothing in between guarded: concurrent callers lose updates."""
        value = self.read() + amount
        self.client.set(self.key, value)
        return value

    def add_watched(self, amount: int = 1, *, max_retries: int = MAX_RETRIES, backoff: float = 0.0) -> TxnResult:
        """WATCH, GET, MULTI, SET, EXEC on one connection; retried on conflict up to ``max_retries``.

        Takes no ``pipeline=``: it needs a connection of its own from WATCH to EXEC.
        """
        return transact(self.client, lambda pipe: self.do_update(pipe, amount), self.key,
                        max_retries=max_retries, backoff=backoff)

    def do_update(self, pipe: Pipeline, amount: int) -> int:
        """One attempt: read under WATCH (immediate mode), then queue the write after MULTI."""
        value = int(pipe.get(self.key) or 0) + amount  # the watched value IS the one we build on
        pipe.multi()
        pipe.set(self.key, value)
        return value

    def add_scripted(self, amount: int = 1) -> TxnResult:
        """The same update as one Lua script: atomic in the server, so never a retry.

        Takes no ``pipeline=``; queue ``SharedCounter._script`` on a pipeline directly if needed.
        """
        return TxnResult(value=self.do_add_scripted(amount), retries=0)

    def do_add_scripted(self, amount: int) -> int:
        assert SharedCounter._script is not None
        return int(SharedCounter._script(keys=[self.key], args=[int(amount)], client=self.client))

    def __repr__(self) -> str:
        return f"SharedCounter({self.key!r})"


def article_watch_add(client: redis.Redis, key: str, amount: int = 1) -> int:
    """THE ARTICLE'S MISTAKE, kept on purpose (DESIGN §7 mistake 5): do not copy. Loses updates.

    * ``client.watch(key)`` is called on the pooled client, not on the pipeline. Where WATCH is
      really sent that way (``execute_command("WATCH", ...)``, or a client that sends it) it lands
      on whichever connection is free, which goes straight back to the pool, while MULTI/EXEC run
      on another connection that watches nothing — and the WATCH left behind can make a later,
      unrelated transaction on that connection fail. redis-py is worse: ``Redis.watch`` only
      issues a DeprecationWarning (hidden by default) and sends nothing at all, as it already did
      in redis-py 2.x.
    * The value read after "WATCH" is not what the transaction is conditioned on, so it is used
      as if it were protected while it is not.
    * ``except redis.WatchError`` is fine — it *is* ``redis.exceptions.WatchError`` — but it never
      fires, so the retry loop is dead code that makes the function look safe.
    * ``while True``: were it ever to fire, nothing bounds or reports the retries.

    The fix is ``SharedCounter.add_watched`` (``transact``): one connection, bounded, retries reported.
    """
    while True:  # mistake: unbounded, and retries are neither counted nor reported
        try:
            client.watch(key)  # mistake: not the pipeline's connection (and redis-py sends nothing)
            current = int(client.get(key) or 0)  # read on whatever connection is free
            pipe = client.pipeline()  # MULTI/EXEC on another connection: it watches nothing
            pipe.multi()
            pipe.set(key, current + amount)
            pipe.execute()
            return current + amount
        except redis.WatchError:  # never raised: the EXEC connection watched nothing
            continue


def exec_replies(client: redis.Redis, build: Callable[[Pipeline], Any], *, transaction: bool = True) -> list[Any]:
    """Send what ``build(pipe)`` queues as one pipeline (MULTI/EXEC if ``transaction``); every reply.

    Errors come back as exception objects in their place instead of being raised, which shows
    that EXEC does not roll back: a command that fails at run time (WRONGTYPE) fails alone, and
    the writes before and after it stay.
    """
    with client.pipeline(transaction=transaction) as pipe:
        build(pipe)
        return pipe.execute(raise_on_error=False)


def sequence_gaps(values: list[int]) -> int:
    """How many times a run of INCR replies jumps by more than 1: other clients' commands in between.

    A plain pipeline is not isolated, so concurrent INCRs land between its commands (gaps > 0);
    MULTI/EXEC runs its block with nothing interleaved (gaps == 0).
    """
    return sum(1 for a, b in zip(values, values[1:], strict=False) if b != a + 1)
