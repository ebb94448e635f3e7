"""Memory sweeps (3장): encodings and bytes across the compact-encoding thresholds, small-hash
bucketing, and what a codec's output costs once stored.

Every byte count here is MEMORY USAGE (SAMPLES 0), the server's own estimate: it depends on the
allocator (jemalloc or libc) and the generation, so treat it like a timing. Encodings and the
thresholds that switch them are exact, and come from the server (``memory.thresholds``), never
assumed: an operator may have changed them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import redis

from redisopt.bench import compare
from redisopt.bulk import chunked
from redisopt.codecs import NAMES, get_codec
from redisopt.memory import encodings, memory_usage, thresholds

# kind -> (the threshold on the element count, the threshold on an element's size or None)
KINDS: dict[str, tuple[str, str | None]] = {
    "hash": ("hash-max-listpack-entries", "hash-max-listpack-value"),
    "set-int": ("set-max-intset-entries", None),
    "set-str": ("set-max-listpack-entries", "set-max-listpack-value"),
    "zset": ("zset-max-listpack-entries", "zset-max-listpack-value"),
}


def _kind(kind: str) -> tuple[str, str | None]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


def _limit(client: redis.Redis, name: str) -> int:
    found = thresholds(client).get(name)
    if found is None:  # set-max-listpack-value is not in THRESHOLDS: ask for it directly
        reply = client.config_get(name)
        if name not in reply:
            raise ValueError(f"this server has no {name} setting")
        found = int(reply[name])
    return found


def _build(client: redis.Redis, key: str, kind: str, n: int, size: int) -> None:
    """``n`` elements of about ``size`` bytes each (``set-int``: integers, ``size`` ignored)."""
    client.unlink(key)
    for part in chunked(range(n), 1_000):
        if kind == "set-int":
            client.sadd(key, *part)
        elif kind == "hash":
            client.hset(key, mapping={f"f{i}": _filler(i, size) for i in part})
        elif kind == "set-str":
            client.sadd(key, *(_filler(i, size) for i in part))
        else:
            client.zadd(key, {_filler(i, size): i for i in part})


def _filler(i: int, size: int) -> str:
    """A distinct string of ``size`` bytes (longer only if ``i`` needs more letters), never an integer.

    Letters only: a member like "7" would be stored as an integer, and a set of them as an intset.
    """
    letters = ""
    while True:
        i, digit = divmod(i, 26)
        letters += chr(ord("a") + digit)
        if i == 0:
            break
    return letters + "x" * max(0, size - len(letters))


def around(limit: int) -> list[int]:
    """Counts or sizes that straddle ``limit``: well below, at it, one past it, well past it."""
    return sorted({1, max(1, limit // 2), limit, limit + 1, 2 * limit, 4 * limit})


def _row(client: redis.Redis, key: str, n: int) -> dict[str, Any]:
    used = memory_usage(client, [key])
    return {"인코딩": encodings(client, [key])[key], "메모리(B)": used, "원소당(B)": round(used / n, 1)}


def count_sweep(client: redis.Redis, key: str, kind: str = "hash", counts: Iterable[int] | None = None,
                *, size: int = 8) -> pd.DataFrame:
    """Encoding and MEMORY USAGE of one ``kind`` key at each element count; ``key`` is removed after.

    ``counts`` defaults to ``around`` the server's own entry threshold for that kind (e.g.
    hash-max-listpack-entries), so the switch to ``hashtable`` shows up whatever the settings.
    """
    count_setting, _ = _kind(kind)
    limit = _limit(client, count_setting)
    rows = []
    try:
        for n in counts if counts is not None else around(limit):
            _build(client, key, kind, n, size)
            rows.append({"자료형": kind, "원소 수": n, "한도": limit, **_row(client, key, n)})
    finally:
        client.unlink(key)
    return pd.DataFrame(rows)


def size_sweep(client: redis.Redis, key: str, kind: str = "hash", sizes: Iterable[int] | None = None,
               *, count: int = 10) -> pd.DataFrame:
    """Encoding and MEMORY USAGE with ``count`` elements of each size (bytes); ``key`` removed after.

    One element of the given size among small ones is enough to convert the whole key: the
    sweep makes every element that size, so the bytes per element show the cost of the switch.
    """
    _, size_setting = _kind(kind)
    if size_setting is None:
        raise ValueError(f"{kind} has no size threshold: integers are stored as integers")
    limit = _limit(client, size_setting)
    rows = []
    try:
        for size in sizes if sizes is not None else around(limit):
            _build(client, key, kind, count, size)
            rows.append({"자료형": kind, "값 크기(B)": size, "한도": limit, **_row(client, key, count)})
    finally:
        client.unlink(key)
    return pd.DataFrame(rows)


def bucket_of(item_id: int, bucket: int) -> tuple[int, str]:
    """Small-hash bucketing: item ``item_id`` lives in hash number ``id // bucket``, field ``id``."""
    return item_id // bucket, str(item_id)


def bucketing(client: redis.Redis, prefix: str, n: int = 10_000, buckets: Sequence[int] = (100,),
              value: Callable[[int], str] = lambda i: f"user{i}@example.com") -> pd.DataFrame:
    """``n`` small values as one string key each vs hashes of ``bucket`` fields (``id // bucket``).

    One row per layout: keys used, the hashes' encodings, total MEMORY USAGE, bytes per item and
    the saving against one key per item. The saving lives in the listpack: a bucket bigger than
    hash-max-listpack-entries turns into a ``hashtable`` and most of it is gone. Keys are removed.
    """
    if n < 1 or any(b < 1 for b in buckets):
        raise ValueError("n and every bucket size must be >= 1")
    rows = []
    plain = [f"{prefix}:item:{i}" for i in range(n)]
    try:
        for part in chunked(range(n), 1_000):
            client.mset({plain[i]: value(i) for i in part})
        used = memory_usage(client, plain)
        rows.append({"배치": "키 하나에 값 하나", "버킷 크기": 1, "키 수": n, "인코딩": "-",
                     "메모리(B)": used, "항목당(B)": round(used / n, 1)})
    finally:
        _unlink(client, plain)
    for bucket in buckets:
        keys = [f"{prefix}:b{bucket}:{h}" for h in range((n - 1) // bucket + 1)]
        try:
            pipe = client.pipeline(transaction=False)
            for i in range(n):
                h, field = bucket_of(i, bucket)
                pipe.hset(keys[h], field, value(i))
            pipe.execute()
            used = memory_usage(client, keys)
            kinds = sorted({str(e) for e in encodings(client, keys).values()})
            rows.append({"배치": f"해시 버킷 (필드 {bucket}개)", "버킷 크기": bucket, "키 수": len(keys),
                         "인코딩": "/".join(kinds), "메모리(B)": used, "항목당(B)": round(used / n, 1)})
        finally:
            _unlink(client, keys)
    table = pd.DataFrame(rows)
    table["절약률"] = (1 - table["메모리(B)"] / table["메모리(B)"].iloc[0]).round(3)
    return table


def _unlink(client: redis.Redis, keys: list[str]) -> None:
    for part in chunked(keys, 1_000):
        client.unlink(*part)


def codec_table(client: redis.Redis, key: str, obj: Any, codecs: Iterable[str] = NAMES, *,
                repeat: int = 5, number: int = 200) -> pd.DataFrame:
    """Each codec on ``obj``: encoded bytes, MEMORY USAGE once SET under ``key``, encode/decode µs.

    Times are medians of ``repeat`` runs of ``number`` calls (``bench.compare``): noisy, like the
    bytes MEMORY USAGE reports. The encoded length is exact. ``key`` is removed afterwards.
    """
    rows = []
    try:
        for name in codecs:
            codec = get_codec(name)
            data = codec.encode(obj)
            if codec.decode(data) != obj:
                raise ValueError(f"{name} does not round-trip this value")
            client.set(key, data)
            times = compare({"encode": lambda c=codec: c.encode(obj), "decode": lambda c=codec, d=data: c.decode(d)},
                            repeat=repeat, number=number)
            med = times.groupby("case")["per_call_us"].median()
            rows.append({"코덱": name, "바이트": len(data), "MEMORY USAGE(B)": memory_usage(client, [key]),
                         "인코드(µs)": round(med["encode"], 1), "디코드(µs)": round(med["decode"], 1)})
    finally:
        client.unlink(key)
    return pd.DataFrame(rows)
