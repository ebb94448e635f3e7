"""A client's connection pool: it keeps its server alive, and callers wait for a connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from redisopt.errors import PoolTimeoutError

if TYPE_CHECKING:
    from redisopt.servers import Server

# Up to this many connections per client; a caller beyond them waits this long for one.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 30.0


class ServerPool(redis.BlockingConnectionPool):
    """A client's pool: it keeps its server alive, and callers wait for a free connection.

    ``start_server(...).client()`` leaves no other reference to the server, which would otherwise
    be stopped at once. Under load (a stampede, a worker pool) a caller beyond ``max_connections``
    waits up to ``timeout`` seconds and then gets PoolTimeoutError, instead of an immediate
    MaxConnectionsError that drops the request.
    """

    def __init__(self, server: Server, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    def get_connection(self, *args: Any, **kwargs: Any) -> redis.connection.AbstractConnection:
        try:
            return super().get_connection(*args, **kwargs)
        except redis.exceptions.ConnectionError as exc:
            raise timeout_error(self, exc) from None


def timeout_error(pool: Any, exc: redis.exceptions.ConnectionError) -> Exception:
    """PoolTimeoutError for redis-py's "No connection available." (sync or asyncio); else ``exc``."""
    if str(exc) != "No connection available.":
        return exc
    return PoolTimeoutError(
        f"no connection to {pool.server.where()} came free within {pool.timeout:g} s: all "
        f"{pool.max_connections} connection(s) of this client stayed busy. Hold them for "
        "less time, or give the client more: client(max_connections=…, pool_timeout=…)"
    )
