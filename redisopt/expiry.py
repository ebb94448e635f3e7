"""Expiry (3장): native TTLs, expiry kept in a sorted set, hash-field TTLs, and a lock without one.

Three ways to make items disappear after a while, and what each costs:

- one key per item with a native TTL (``SET … PX``): the server removes it (lazily when touched,
  actively by sampling), a read never sees it again, nothing to run;
- the article's pattern 4, deadlines in a sorted set (score = deadline): the data stays, and stays
  readable, until a sweeper removes it, and the sweep must remove the data *and* its index entry
  at once (``ZSetExpiry.sweep``: one Lua script) or a renewal between the two is lost;
- hash-field TTLs (``HEXPIRE``/``HPEXPIRE``; Redis 7.4+, Valkey 9+): per-field expiry inside one
  hash, which is what ``ZSetExpiry`` builds by hand. ``has_field_ttl`` says whether a server has it.

Mistake 1 of the article, the lock taken with SETNX and then given a TTL with EXPIRE, is here too:
``article_setnx_lock`` runs it, and ``crash_after_setnx`` kills a real process between the two
commands, which leaves the lock with no TTL, held forever. ``SET key token NX EX ttl`` is one command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from redisopt.errors import RedisoptError
from redisopt.records import has_command
from redisopt.scripts import unbound_script

# KEYS[1] the data hash, KEYS[2] the deadline index (sorted set: field -> deadline)
# ARGV[1] now (seconds, the caller's clock), ARGV[2] at most this many fields per call
# returns the fields removed, from both keys in one step (nothing can renew one in between)
SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  redis.call('HDEL', KEYS[1], unpack(due))
end
return due
"""


class ZSetExpiry:
    """Fields of one hash with deadlines in a sorted set, removed by ``sweep`` (the article's pattern 4).

    ``get`` hides a field whose deadline has passed even before a sweep (the data is still there,
    and still costs memory, until one runs). Deadlines come from the caller's clock (``now``,
    default ``time.time()``), as in the article: clients whose clocks disagree disagree on expiry.
    """

    _sweep = unbound_script(SWEEP)

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.data = f"{name}:data"
        self.deadlines = f"{name}:deadlines"

    def put(self, field: str, value: Any, ttl: float, *, now: float | None = None,
            pipeline: redis.client.Pipeline | None = None) -> None:
        """Store ``field`` until ``now + ttl`` (seconds), value and deadline in one MULTI/EXEC.

        With ``pipeline``, both commands are queued on it and its owner executes it.
        """
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, not {ttl!r}")
        deadline = (time.time() if now is None else now) + ttl
        pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=True)
        pipe.hset(self.data, field, value)
        pipe.zadd(self.deadlines, {field: deadline})
        if pipeline is None:
            pipe.execute()

    def get(self, field: str, *, now: float | None = None) -> Any:
        """The value, or None when missing or past its deadline (swept or not)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.data, field)
        pipe.zscore(self.deadlines, field)
        value, deadline = pipe.execute()
        if deadline is None or deadline <= (time.time() if now is None else now):
            return None
        return value

    def sweep(self, *, now: float | None = None, limit: int = 1_000) -> list[str]:
        """Remove up to ``limit`` fields whose deadline has passed, atomically; return them."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        at = time.time() if now is None else now
        found = self._sweep(keys=[self.data, self.deadlines], args=[repr(at), limit], client=self.client)
        return [f.decode() if isinstance(f, bytes) else f for f in found]

    def stored(self) -> tuple[int, int]:
        """(fields in the data hash, entries in the index): what still takes memory."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.data)
        pipe.zcard(self.deadlines)
        data, index = pipe.execute()
        return int(data), int(index)


def has_field_ttl(client: redis.Redis) -> bool:
    """Does the server expire hash fields (HPEXPIRE: Redis 7.4+, Valkey 9+)? Asked, not guessed."""
    return has_command(client, "HPEXPIRE")


def article_setnx_lock(client: redis.Redis, key: str, ttl: int,
                       between: Callable[[], object] | None = None) -> bool:
    """The article's lock (mistake 1): SETNX, then EXPIRE — two commands; ``between`` runs in the gap.

    A process that dies in the gap leaves ``key`` with no TTL: nobody takes the lock again, ever.
    Kept to demonstrate that; take a lock with ``SET key token NX EX ttl`` (``redisopt.Lock``).
    """
    if not client.setnx(key, 1):
        return False
    if between is not None:
        between()
    client.expire(key, ttl)
    return True


_CRASH = """
import json, os, signal, sys
import redis
r = redis.Redis(**json.loads(os.environ.pop("REDISOPT_CRASH_CONN")))
key, ttl, atomic = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if atomic:  # the fix: one command
    r.set(key, "worker", nx=True, ex=ttl)
    die()
if r.setnx(key, 1):  # the article's lock: article_setnx_lock, with the crash in the gap
    die()
    r.expire(key, ttl)
"""
_CONN_KEYS = ("host", "port", "db", "username", "password", "path", "ssl")


def _connection_env(client: redis.Redis) -> str:
    """How a child reaches ``client``'s server, as JSON for its environment (never its argv)."""
    kwargs = client.connection_pool.connection_kwargs
    found = {k: kwargs[k] for k in _CONN_KEYS if kwargs.get(k) is not None}
    if "path" in found:
        found["unix_socket_path"] = found.pop("path")
    if issubclass(client.connection_pool.connection_class, redis.SSLConnection):
        found["ssl"] = True
    return json.dumps(found)


def crash_after_setnx(client: redis.Redis, keys: dict[str, bool], ttl: int = 10,
                      timeout: float = 60.0) -> dict[str, int]:
    """Take each lock in ``keys`` in its own process, which is then SIGKILLed; return exit codes.

    ``keys`` maps a lock key to ``atomic``: False runs the article's SETNX-then-EXPIRE and dies in
    the gap, True runs ``SET NX EX`` and dies right after. The processes run side by side, on
    ``client``'s server (they import only redis-py, so they start fast).
    """
    env = {**os.environ, "REDISOPT_CRASH_CONN": _connection_env(client)}
    procs = {
        key: subprocess.Popen([sys.executable, "-c", _CRASH, key, str(ttl), "1" if atomic else "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for key, atomic in keys.items()
    }
    codes = {}
    try:
        for key, proc in procs.items():
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != -signal.SIGKILL:
                raise RedisoptError(f"the locking process for {key!r} did not die as planned "
                                    f"(exit {proc.returncode}): {err.decode(errors='replace')[-500:]}")
            codes[key] = proc.returncode
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # only after a timeout or an error above
                proc.kill()
                proc.wait()
    return codes
