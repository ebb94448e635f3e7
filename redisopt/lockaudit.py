"""Lock keys without a TTL: the article's cleanup (mistake 4) and what to do instead (4장).

The article's ``cleanup_expired_locks`` deletes every lock key whose TTL is -1. A key with a TTL
expires by itself, so nothing "expired" is ever left to clean; a key with TTL -1 is a lock created
without one (SETNX, then a crash before EXPIRE), and deleting it may hand a live holder's lock to
someone else. The fix is at creation (SET NX PX, one command); what remains for a sweep is to
report such keys, or give them a TTL without touching keys that have one (EXPIRE ... NX).
"""

from __future__ import annotations

import redis

from redisopt.bulk import chunked, scan_keys


def article_cleanup_expired_locks(client: redis.Redis, pattern: str) -> int:
    """The article's ``cleanup_expired_locks``, as written (made synchronous); returns the keys deleted.

    Kept to demonstrate mistake 4: one TTL round trip per key, and a TTL-less lock is deleted
    whoever holds it. Its ``safe_scan`` collects every key first, with COUNT 100.
    """
    deleted = 0
    for lock_key in list(scan_keys(client, pattern, count=100)):
        if client.ttl(lock_key) == -1:  # TTL이 없는 경우
            client.delete(lock_key)
            deleted += 1
    return deleted


def locks_without_ttl(client: redis.Redis, pattern: str, count: int = 1_000) -> list[str]:
    """Keys matching ``pattern`` that will never expire (TTL -1); deletes nothing.

    SCAN, then one pipelined TTL per batch: about two round trips per SCAN call, not one per key.
    A key that vanished between SCAN and TTL (-2) is not reported.
    """
    found: list[str] = []
    for keys in chunked(scan_keys(client, pattern, count=count), count):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        found += [key for key, ttl in zip(keys, pipe.execute(), strict=True) if ttl == -1]
    return found


def repair_lock_ttls(client: redis.Redis, pattern: str, ttl: float, count: int = 1_000) -> list[str]:
    """Give a TTL of ``ttl`` seconds to keys matching ``pattern`` that have none; returns those keys.

    PEXPIRE ... NX sets an expiry only where there is none, in the same command that checks, so a
    lock that has a TTL (or was just re-acquired with SET NX PX) is left exactly as it is, and no
    lock is deleted under a live holder: an orphan simply expires ``ttl`` seconds later.
    Needs Redis/Valkey >= 7.0 (the NX option of PEXPIRE).
    """
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
    ms = max(1, round(ttl * 1_000))
    repaired: list[str] = []
    for keys in chunked(scan_keys(client, pattern, count=count), count):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pexpire(key, ms, nx=True)
        repaired += [key for key, done in zip(keys, pipe.execute(), strict=True) if done]
    return repaired
