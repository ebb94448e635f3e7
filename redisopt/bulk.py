"""Bulk work without blocking the server: variadic writes in chunks, SCAN, UNLINK by pattern."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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


def insert_cases(client: redis.Redis, prefix: str, n: int, value: str = "v") -> dict[str, Callable[[], Any]]:
    """The batch-insert ladder of 4장: ``n`` keys written four ways, for ``bench.compare``.

    One SET per round trip; one pipeline (one round trip); the same pipeline wrapped in MULTI/EXEC
    (atomicity nobody asked for: two more commands, DESIGN mistake 8); one variadic MSET (one command).
    """
    keys = [f"{prefix}:{i}" for i in range(n)]

    def single() -> None:
        for key in keys:
            client.set(key, value)

    def pipelined(transaction: bool) -> None:
        pipe = client.pipeline(transaction=transaction)
        for key in keys:
            pipe.set(key, value)
        pipe.execute()

    return {
        "개별 SET": single,
        "파이프라인": lambda: pipelined(False),
        "파이프라인 + MULTI": lambda: pipelined(True),
        "MSET (가변 인자)": lambda: client.mset(dict.fromkeys(keys, value)),
    }


def populate(client: redis.Redis, prefix: str, n: int, size: int = 8) -> int:
    """Create ``n`` string keys ``<prefix>:0 …`` fast, for demos that need a big keyspace.

    Uses DEBUG POPULATE where the server allows it (private servers do), else pipelined MSET in
    chunks. Never on a server the user supplied: the guard refuses DEBUG there, and a big keyspace
    on someone's server is the wrong place for a blocking demo anyway. Returns the keys created.
    """
    before = client.dbsize()
    try:
        client.execute_command("DEBUG", "POPULATE", n, prefix, size)
        return client.dbsize() - before
    except redis.exceptions.ResponseError:  # DEBUG disabled on this server
        pipe = client.pipeline(transaction=False)
        for part in chunked(range(n), CHUNK):
            pipe.mset({f"{prefix}:{i}": "x" * size for i in part})
        pipe.execute()
        return client.dbsize() - before
