"""What keys cost in memory and how the server encodes them.

Byte counts depend on the server version and its allocator (jemalloc in most builds; libc malloc
in the pip-bundled Valkey), and MEMORY USAGE is the server's own estimate: treat them like timings.
The thresholds that switch encodings are settings an operator may change, so they are read from the
server, not assumed. The one limit that is not a setting, how long a string may be and stay
``embstr``, changed between generations, so it is measured (``embstr_max_value``):

- Redis <= 7.4 and Valkey < 8.1 look at the value alone: embstr up to 44 bytes, whatever the key.
- Valkey 8.1+ and Redis 8 embed the key name (and a TTL) in the same allocation, so the key counts
  too: measured on Valkey 8.1.8, key + value <= 41 bytes (<= 33 with a TTL). Valkey 9.1.2 allows
  more (key + value ~111 bytes). Long key names cost a value its embstr encoding.
"""

from __future__ import annotations

import re
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


def embstr_max_value(client: redis.Redis, key: str, *, ttl: int | None = None, upto: int = 256) -> int:
    """The longest value (bytes) that a SET under ``key`` keeps ``embstr`` on this server; -1 if none.

    Measured, not assumed (see the module docstring): SET lengths 0..``upto`` with OBJECT
    ENCODING after each, all in one pipeline (one round trip); ``key`` is deleted afterwards.
    ``ttl`` (seconds) measures keys that carry an expiry, which the newest servers embed too.
    """
    if ttl is not None and ttl < 1:
        raise ValueError("ttl must be >= 1 second (or None for no expiry)")
    pipe = client.pipeline(transaction=False)
    for n in range(upto + 1):
        pipe.set(key, "x" * n, ex=ttl)
        pipe.object("encoding", key)
    pipe.unlink(key)
    found = pipe.execute()[1:-1:2]
    best = -1
    for n, encoding in enumerate(found):  # the embstr lengths form a prefix 0..best
        if encoding != "embstr":
            break
        best = n
    return best


def embstr_boundary(client: redis.Redis, prefix: str, key_lengths: Iterable[int],
                    ttl: int | None = None) -> pd.DataFrame:
    """``embstr_max_value`` for probe keys of each length (``prefix`` padded), one row per length.

    Where no value at all stays embstr (a long key on Valkey 8.1), both lengths are left empty (NA).
    """
    rows = []
    for length in key_lengths:
        key = _probe_key(prefix, length)
        best = embstr_max_value(client, key, ttl=ttl)
        rows.append({"키 길이": length, "TTL": "있음" if ttl else "없음",
                     "embstr 최대 값 길이": best if best >= 0 else None,
                     "키 + 값": length + best if best >= 0 else None})
    table = pd.DataFrame(rows)
    return table.astype({"embstr 최대 값 길이": "Int64", "키 + 값": "Int64"})


def _probe_key(prefix: str, length: int) -> str:
    base = prefix + ":"
    if length <= len(base):
        raise ValueError(f"a {length}-byte probe key cannot hold the prefix {base!r}")
    return base + "k" * (length - len(base))


_INT = re.compile(r"^(0|-?[1-9][0-9]{0,18})$")


def _is_int_encodable(value: bytes) -> bool:
    """Would the server store this string as ``int``: a canonical 64-bit integer literal."""
    text = value.decode("ascii", "replace")
    return bool(_INT.match(text)) and -(2**63) <= int(text) < 2**63


def predict_string_encodings(client: redis.Redis, values: dict[str, str], prefix: str,
                             ttl: int | None = None) -> dict[str, str]:
    """What OBJECT ENCODING should say for each string ``key: value``, from measured limits.

    ``int`` for an integer literal; otherwise ``embstr`` while the value fits the limit measured
    (``embstr_max_value``) with a probe key of the same length under ``prefix``; else ``raw``.
    One probe per distinct key length, so a few round trips for thousands of keys.
    """
    limits: dict[int, int] = {}
    predicted = {}
    for key, value in values.items():
        data = str(value).encode()
        if _is_int_encodable(data):
            predicted[key] = "int"
            continue
        length = len(key.encode())
        if length not in limits:
            limits[length] = embstr_max_value(client, _probe_key(prefix, length), ttl=ttl)
        predicted[key] = "embstr" if len(data) <= limits[length] else "raw"
    return predicted


def _list_sizes(size_setting: int) -> tuple[int, int]:
    """(small, big) element counts for 12-byte items: below the list limit and well past it."""
    if size_setting > 0:  # a count of entries per listpack
        return max(1, min(10, size_setting // 2)), size_setting + 1
    limit_bytes = 4096 << min(-size_setting - 1, 4)  # -1..-5: 4 KB..64 KB
    return 10, limit_bytes // 8 + 1


def encoding_zoo(client: redis.Redis, prefix: str) -> pd.DataFrame:
    """One key per interesting case, built just past the server's own limits.

    Returns the cases with how each was built and its OBJECT ENCODING. The thresholds come from
    CONFIG GET and the embstr limit is measured (``embstr_max_value``) for the zoo's own key
    length, and the labels name no number, so the same table holds on any server, whatever its
    generation or its operator's settings. A List shrunk back below half its limit (LTRIM) turns
    back into a listpack (Redis/Valkey >= 7.2); the other types never convert back.
    """
    limits = thresholds(client)
    keys = [f"{prefix}:{i:02d}" for i in range(14)]
    str_max = embstr_max_value(client, keys[1])
    hash_n, hash_len = limits["hash-max-listpack-entries"] + 1, limits["hash-max-listpack-value"] + 1
    set_n = limits["set-max-listpack-entries"] + 1
    zset_n = limits["zset-max-listpack-entries"] + 1
    small, big = _list_sizes(limits["list-max-listpack-size"])
    items = [f"item:{i:07d}" for i in range(big)]

    def shrunk(k: str) -> None:
        push_many(client, k, items)
        client.ltrim(k, 0, small - 1)

    cases: list[tuple[str, str, Callable[[str], object]]] = [
        ("string", "정수 12345", lambda k: client.set(k, 12345)),
        ("string", "embstr 한도 길이의 문자열", lambda k: client.set(k, "x" * str_max)),
        ("string", "한도보다 1바이트 긴 문자열", lambda k: client.set(k, "x" * (str_max + 1))),
        ("hash", "필드 2개", lambda k: client.hset(k, mapping={"a": 1, "b": 2})),
        ("hash", "필드 (한도+1)개", lambda k: client.hset(k, mapping={f"f{i}": i for i in range(hash_n)})),
        ("hash", "값 하나가 (한도+1)바이트", lambda k: client.hset(k, "f", "v" * hash_len)),
        ("list", "원소 몇 개", lambda k: client.rpush(k, *items[:small])),
        ("list", "원소가 한도를 넘게", lambda k: push_many(client, k, items)),
        ("list", "한도를 넘긴 뒤 LTRIM으로 몇 개만", shrunk),
        ("set", "정수 10개", lambda k: client.sadd(k, *range(10))),
        ("set", "문자열 10개", lambda k: client.sadd(k, *[f"u{i}" for i in range(10)])),
        ("set", "문자열 (한도+1)개", lambda k: client.sadd(k, *[f"u{i}" for i in range(set_n)])),
        ("zset", "원소 10개", lambda k: client.zadd(k, {f"m{i}": i for i in range(10)})),
        ("zset", "원소 (한도+1)개", lambda k: client.zadd(k, {f"m{i}": i for i in range(zset_n)})),
    ]
    client.unlink(*keys)
    for key, (_, _, build) in zip(keys, cases, strict=True):
        build(key)
    found = encodings(client, keys)
    return pd.DataFrame(
        {"자료형": [c[0] for c in cases], "만든 방법": [c[1] for c in cases], "인코딩": [found[k] for k in keys]}
    )
