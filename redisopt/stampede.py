"""Stampede guards (6장): what the cache does on a miss, and XFetch's early recompute.

A popular key expires and a hundred requests miss at once: with no guard, a hundred identical
queries hit the database (``"none"``). Single flight (``"lock"``) lets exactly one of them load:
the miss and the lock are one script (``GET_OR_LOCK``: the value if there is one, else
``SET lock token NX PX``, the workbook's Lock protocol without its fencing counter, so no per-key
state outlives the load), and the others wait for the *value*, polling with backoff (each poll
takes a pooled connection for one round trip and gives it back, so hundreds of waiters share
a 100-connection pool). Nobody ever gets None for "still loading" (the article's mistake 10):
a waiter that outlives ``wait`` seconds loads the value itself, and if the loader died, its lock
expires after ``lock_ttl`` and the next waiter takes over as the one loader.

The lock doubles as a *lease* (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013): the
loader stores its value with ``COMMIT``, which checks the token first. An invalidation deletes
the lock along with the value, so a load that read the database *before* a write cannot store
that old value *after* it — the stale-set race of cache-aside (``redisopt.staleset`` shows it).

XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede Prevention",
VLDB 2015) keeps ``delta``, how long the last recompute took, with the value, and recomputes
early when ``now - delta * beta * ln(rand()) >= expiry``: the closer the expiry and the slower
the recompute, the likelier; ``beta`` > 1 favours earlier. Only a value that exists can be
refreshed early, so cold misses still go through single flight; an early recompute takes the
key's lock without waiting, and whoever loses keeps serving the value it has.
"""

from __future__ import annotations

import math
import random

from redisopt.scripts import unbound_script

__all__ = ["COMMIT_LUA", "GET_OR_LOCK_LUA", "STAMPEDES", "xfetch_due"]

STAMPEDES = ("none", "lock", "xfetch")

# KEYS[1] the value, KEYS[2] the key's lock; ARGV[1] our random token, ARGV[2] lock TTL in ms.
# Returns {1, value} on a hit, {0, 1} when the lock is now ours (load!), {0, 0} while another loads.
GET_OR_LOCK_LUA = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 1} end
return {0, 0}
"""

# KEYS[1] the key's lock, KEYS[2] the value, KEYS[3..] tag sets; ARGV[1] our token, ARGV[2] the
# payload, ARGV[3] its TTL in ms, ARGV[4] the cache key (the tag sets' member).
# Returns 1 when stored (and the lock released), 0 when the lease is gone: an invalidation or a
# write deleted the lock (or it expired) while we loaded, so what we loaded may be stale.
COMMIT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[4])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
redis.call('DEL', KEYS[1])
return 1
"""

GET_OR_LOCK = unbound_script(GET_OR_LOCK_LUA)
COMMIT = unbound_script(COMMIT_LUA)

POLL_FIRST = 0.002  # s: a waiter's first pause; doubles up to POLL_MAX, with jitter
POLL_MAX = 0.05


def xfetch_due(delta: float, remaining: float, beta: float, rand: float | None = None) -> bool:
    """XFetch's test, with ``remaining = expiry - now``: ``-delta * beta * ln(rand) >= remaining``.

    ``rand`` is uniform in (0, 1]; an expired or TTL-less value (``remaining`` <= 0 or unknown)
    is not refreshed early: it is a miss or it never expires.
    """
    if delta <= 0 or remaining <= 0:
        return False
    u = 1.0 - random.random() if rand is None else rand  # (0, 1]: ln(0) is -inf
    return -delta * beta * math.log(u) >= remaining


def backoff(pause: float) -> tuple[float, float]:
    """This pause with equal jitter (half fixed, half random: waiters do not poll in step), and the next."""
    return pause / 2 + random.uniform(0, pause / 2), min(POLL_MAX, pause * 2)
