"""redisopt: the helper package behind the Redis performance workbook.

Notebooks import from here only; each name lives in a small module named by its noun.
"""

from redisopt.bench import (
    LatencyProbe,
    RoundTrips,
    compare,
    count_round_trips,
    measure,
    speedup,
    summarize,
    worst_stall_ms,
)
from redisopt.errors import (
    ConfigError,
    DestructiveCommandError,
    NoServerError,
    RedisoptError,
    ServerStartError,
)
from redisopt.server import Server, connect, default_server, start_server

__all__ = [
    "ConfigError",
    "DestructiveCommandError",
    "LatencyProbe",
    "NoServerError",
    "RedisoptError",
    "RoundTrips",
    "Server",
    "ServerStartError",
    "compare",
    "connect",
    "count_round_trips",
    "default_server",
    "measure",
    "speedup",
    "start_server",
    "summarize",
    "worst_stall_ms",
]
