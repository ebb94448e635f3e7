"""asyncio twins: ``redisopt.aio.connect()`` gives a ``redis.asyncio.Redis`` on the workbook's server.

Same server as ``redisopt.connect()`` (provisioned on first use), same exact round-trip counter
(``redisopt.count_round_trips`` works on these clients too), same guard on a REDIS_URL server.

``WorkQueue``, ``Lock``, ``Cache``, ``ReliableQueue`` and ``StreamQueue`` are the asyncio twins of
``redisopt.WorkQueue``, ``redisopt.Lock``, ``redisopt.Cache``, ``redisopt.ReliableQueue`` and
``redisopt.StreamQueue``: same scripts, keys, codecs and errors (shared code, not
copies); ``await q.length()`` and ``async with lock`` where the sync API uses ``len(q)`` and ``with``.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

from redisopt.aio.cache import Cache
from redisopt.aio.connection import ASYNC_CLASSES
from redisopt.aio.lock import Lock
from redisopt.aio.queue import WorkQueue
from redisopt.aio.reliable import ReliableQueue
from redisopt.aio.streamqueue import StreamQueue
from redisopt.pool import MAX_CONNECTIONS, POOL_TIMEOUT, timeout_error
from redisopt.server import default_server
from redisopt.servers import Server

__all__ = ["AsyncServerPool", "Cache", "Lock", "ReliableQueue", "StreamQueue", "WorkQueue", "client_for", "connect"]


class AsyncServerPool(redis.asyncio.BlockingConnectionPool):
    """The asyncio twin of ``redisopt.pool.ServerPool``: keeps its server alive, callers wait."""

    def __init__(self, server: Server, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except redis.exceptions.ConnectionError as exc:
            raise timeout_error(self, exc) from None


def client_for(
    server: Server,
    *,
    decode_responses: bool = True,
    allow_destructive: bool = False,
    max_connections: int = MAX_CONNECTIONS,
    pool_timeout: float = POOL_TIMEOUT,
    **kwargs: Any,
) -> redis.asyncio.Redis:
    """An asyncio client of ``server`` with its own pool, like ``Server.client()``."""
    options = server.pool_options(decode_responses, allow_destructive, max_connections, pool_timeout, **kwargs)
    options["connection_class"] = ASYNC_CLASSES[options["connection_class"]]
    return redis.asyncio.Redis.from_pool(AsyncServerPool(server, **options))


def connect(*, decode_responses: bool = True, allow_destructive: bool = False, **kwargs: Any) -> redis.asyncio.Redis:
    """An asyncio client to the workbook's server (``redisopt.connect()``'s, started on first use)."""
    return client_for(default_server(), decode_responses=decode_responses,
                      allow_destructive=allow_destructive, **kwargs)
