"""What keys cost in memory and how the server encodes them.

Byte counts depend on the server version and its allocator (jemalloc in most builds; libc malloc
in the pip-bundled Valkey): treat them like timings. The thresholds that switch encodings are
settings an operator may change, so they are read from the server, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import redis

from redisopt.bulk import chunked, push_many

# The size/entry limits that decide whether a small compact encoding is kept, per type.
THRESHOLDS = (
    "hash-max-listpack-entries",
    "hash-max-listpack-value",
    "set-max-intset-entries",
    "set-max-listpack-entries",
    "zset-max-listpack-entries",
    "list-max-listpack-size",
)


def _per_key(client: redis.Redis, keys: Iterable[str], command: Callable[[Any, str], object],
             batch: int) -> list[Any]:
    """Run ``command(pipe, key)`` for every key, ``batch`` keys per round trip; replies in order."""
    replies: list[Any] = []
    for part in chunked(keys, batch):
        pipe = client.pipeline(transaction=False)
        for key in part:
            command(pipe, key)
        replies.extend(pipe.execute(raise_on_error=False))
    return replies


def memory_usage(client: redis.Redis, keys: Iterable[str], batch: int = 1_000) -> int:
    """Total MEMORY USAGE of ``keys`` (SAMPLES 0: exact), pipelined ``batch`` keys per round trip."""
    sizes = _per_key(client, keys, lambda pipe, key: pipe.memory_usage(key, samples=0), batch)
    return sum(size or 0 for size in sizes)


def encodings(client: redis.Redis, keys: Iterable[str], batch: int = 1_000) -> dict[str, str | None]:
    """OBJECT ENCODING of each key, pipelined; None for a key that does not exist."""
    keys = list(keys)
    found = _per_key(client, keys, lambda pipe, key: pipe.object("encoding", key), batch)
    return dict(zip(keys, found, strict=True))


def thresholds(client: redis.Redis) -> dict[str, int]:
    """The server's encoding thresholds, in one round trip (CONFIG GET is read-only: fine anywhere)."""
    pipe = client.pipeline(transaction=False)
    for name in THRESHOLDS:
        pipe.config_get(name)
    found = {}
    for name, reply in zip(THRESHOLDS, pipe.execute(), strict=True):
        if name in reply:
            found[name] = int(reply[name])
    return found


def encoding_zoo(client: redis.Redis, prefix: str) -> pd.DataFrame:
    """One key per interesting case, built just past the server's own thresholds.

    Returns the cases with how each was built and its OBJECT ENCODING. The limits come from
    CONFIG GET and the labels name no number, so the same table holds on any server, whatever its
    operator set. Keep ``prefix`` short: Valkey 8 stores the key name inside the value object, so
    a string stays ``embstr`` only while key and value together fit in about 48 bytes (Redis looks
    at the value alone, up to 44 bytes; that limit is compiled in, not a setting).
    """
    limits = thresholds(client)
    hash_n, hash_len = limits["hash-max-listpack-entries"] + 1, limits["hash-max-listpack-value"] + 1
    set_n = limits["set-max-listpack-entries"] + 1
    zset_n = limits["zset-max-listpack-entries"] + 1
    cases: list[tuple[str, str, Callable[[str], object]]] = [
        ("string", "정수 12345", lambda k: client.set(k, 12345)),
        ("string", "짧은 문자열 (5바이트)", lambda k: client.set(k, "hello")),
        ("string", "긴 문자열 (100바이트)", lambda k: client.set(k, "x" * 100)),
        ("hash", "필드 2개", lambda k: client.hset(k, mapping={"a": 1, "b": 2})),
        ("hash", "필드 (한도+1)개", lambda k: client.hset(k, mapping={f"f{i}": i for i in range(hash_n)})),
        ("hash", "값 하나가 (한도+1)바이트", lambda k: client.hset(k, "f", "v" * hash_len)),
        ("list", "원소 10개", lambda k: client.rpush(k, *range(10))),
        ("list", "원소 5,000개", lambda k: push_many(client, k, [f"item:{i:06d}" for i in range(5_000)])),
        ("set", "정수 10개", lambda k: client.sadd(k, *range(10))),
        ("set", "문자열 10개", lambda k: client.sadd(k, *[f"u{i}" for i in range(10)])),
        ("set", "문자열 (한도+1)개", lambda k: client.sadd(k, *[f"u{i}" for i in range(set_n)])),
        ("zset", "원소 10개", lambda k: client.zadd(k, {f"m{i}": i for i in range(10)})),
        ("zset", "원소 (한도+1)개", lambda k: client.zadd(k, {f"m{i}": i for i in range(zset_n)})),
    ]
    keys = [f"{prefix}:{i:02d}" for i in range(len(cases))]
    client.unlink(*keys)
    for key, (_, _, build) in zip(keys, cases, strict=True):
        build(key)
    found = encodings(client, keys)
    return pd.DataFrame(
        {"자료형": [c[0] for c in cases], "만든 방법": [c[1] for c in cases], "인코딩": [found[k] for k in keys]}
    )
