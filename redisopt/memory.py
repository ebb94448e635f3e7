"""What keys cost in memory and how the server encodes them.

Byte counts depend on the allocator (jemalloc Redis vs libc Valkey) and version: treat them like
timings. Encodings and the thresholds that switch them are read from the server, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from redisopt.bulk import chunked

# The size/entry limits that decide whether a small compact encoding is kept, per type.
THRESHOLDS = (
    "hash-max-listpack-entries",
    "hash-max-listpack-value",
    "set-max-intset-entries",
    "set-max-listpack-entries",
    "zset-max-listpack-entries",
    "list-max-listpack-size",
)


def memory_usage(client: redis.Redis, keys: Iterable[str], batch: int = 1_000) -> int:
    """Total MEMORY USAGE of ``keys`` (SAMPLES 0: exact), pipelined ``batch`` keys per round trip."""
    total = 0
    for part in chunked(keys, batch):
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.memory_usage(key, samples=0)
        total += sum(size or 0 for size in pipe.execute())
    return total


def encodings(client: redis.Redis, keys: Iterable[str]) -> dict[str, str | None]:
    """OBJECT ENCODING of each key in one round trip; None for a key that does not exist."""
    keys = list(keys)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.object("encoding", key)
    return dict(zip(keys, pipe.execute(raise_on_error=False)))


def thresholds(client: redis.Redis) -> dict[str, int]:
    """The server's encoding thresholds (CONFIG GET is read-only, so fine on any server)."""
    found = {}
    for name in THRESHOLDS:
        value = client.config_get(name).get(name)
        if value is not None:
            found[name] = int(value)
    return found
