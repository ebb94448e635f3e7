"""Bulk work without blocking the server: variadic writes in chunks, SCAN, UNLINK by pattern."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import redis
from redis.client import Pipeline

CHUNK = 1_000  # values per variadic command: big enough to amortise, small enough not to stall


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def scan_keys(client: redis.Redis, pattern: str, count: int = 1_000) -> Iterator[str]:
    """Yield keys matching ``pattern`` with SCAN: many short calls instead of one blocking KEYS."""
    yield from client.scan_iter(match=pattern, count=count)


def unlink_matching(client: redis.Redis, pattern: str, batch: int = 500) -> int:
    """UNLINK keys matching ``pattern`` in batches; memory is freed off the main thread."""
    removed = 0
    for keys in chunked(scan_keys(client, pattern), batch):
        removed += client.unlink(*keys)
    return removed


def push_many(
    client: redis.Redis, key: str, values: Sequence[Any], chunk: int = CHUNK, *, pipeline: Pipeline | None = None
) -> int:
    """RPUSH ``values`` with variadic commands, ``chunk`` values per command, one pipeline.

    Returns the list's length. With ``pipeline`` (rq's convention) the commands join the caller's
    pipeline, which the caller executes (inside its MULTI, if it is a transaction), and the return
    value is the number of values queued.
    """
    pipe = pipeline if pipeline is not None else client.pipeline(transaction=False)
    for part in chunked(values, chunk):
        pipe.rpush(key, *part)
    if pipeline is not None:
        return len(values)
    replies = pipe.execute()
    return int(replies[-1]) if replies else client.llen(key)


def add_many(
    client: redis.Redis, key: str, members: Sequence[Any], chunk: int = CHUNK, *, pipeline: Pipeline | None = None
) -> int:
    """SADD ``members`` with variadic commands in one pipeline; returns how many were new.

    With ``pipeline`` the commands join the caller's pipeline (the caller executes it) and the
    return value is the number of members queued.
    """
    pipe = pipeline if pipeline is not None else client.pipeline(transaction=False)
    for part in chunked(members, chunk):
        pipe.sadd(key, *part)
    if pipeline is not None:
        return len(members)
    return sum(pipe.execute())
