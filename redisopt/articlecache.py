"""The article's cache code, kept as written (in sync form) so 6장 can show its mistakes happen.

``article_get_with_lock`` is the article's ``get_request_status_with_lock``: SETNX then EXPIRE
(mistake 1: two commands, a crash between them leaves a lock that never expires), ``DEL`` to
release without checking the owner (mistake 2), a loser that sleeps 0.1 s once and returns
whatever GET says — None while the winner is still loading (mistake 10) — and SETEX of the
loaded value, which redis-py refuses for None, a bool or a dict (mistake 11: DataError).
``redisopt.Cache`` is the fix for all four. Never use this for anything but the demonstration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from redisopt.keyspace import KeySpace

__all__ = ["article_burst", "article_get_with_lock"]


def article_get_with_lock(client: redis.Redis, key: str, loader: Callable[[], Any], *, lock_key: str | None = None,
                          ttl: int = 300, lock_ttl: int = 10, retry_after: float = 0.1) -> Any:
    """The article's stampede guard, line by line (``redis.setex`` sent as the SETEX it is, to
    skip redis-py's deprecation warning; the DataError for None/bool/dict comes all the same)."""
    lock_key = lock_key or f"lock:{key}"
    if client.setnx(lock_key, 1):  # mistake 1: not atomic with the EXPIRE below
        client.expire(lock_key, lock_ttl)
        try:
            value = client.get(key)
            if value is None:
                value = loader()
                client.execute_command("SETEX", key, ttl, value)  # mistake 11: DataError for None, bools
            return value
        finally:
            client.delete(lock_key)  # mistake 2: deletes the lock even if it is no longer ours
    time.sleep(retry_after)  # mistake 10: one short sleep, then whatever is there — maybe None
    return client.get(key)


def article_burst(client: redis.Redis, keyspace: KeySpace, *, requests: int = 20,
                  query_s: float = 1.0) -> dict[str, int]:
    """``requests`` threads at once on a cold key through ``article_get_with_lock``, with a loader
    slower than its 0.1 s retry: how many got None (all but the winner), how many loads ran (1)."""
    key, lock_key = keyspace.key("article", "status"), keyspace.key("article", "lock")
    client.unlink(key, lock_key)
    loads = 0
    answers: list[Any] = []
    barrier = threading.Barrier(requests)

    def loader() -> str:
        nonlocal loads
        loads += 1
        time.sleep(query_s)
        return "processing"

    def request() -> None:
        barrier.wait()
        answers.append(article_get_with_lock(client, key, loader, lock_key=lock_key))

    threads = [threading.Thread(target=request) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.unlink(key, lock_key)
    return {"requests": requests, "none_answers": sum(a is None for a in answers), "db_loads": loads}
