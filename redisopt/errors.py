"""One small exception hierarchy, so callers can catch everything redisopt raises on purpose."""

from __future__ import annotations

import redis.exceptions


class RedisoptError(Exception):
    """Base class of every error redisopt raises deliberately."""


class ConfigError(RedisoptError, ValueError):
    """A setting is malformed: a bad REDIS_URL, an unknown backend name, a bad config value."""


class NoServerError(RedisoptError):
    """No backend could provide a server; the message lists the ways to get one."""


class PoolTimeoutError(RedisoptError, redis.exceptions.ConnectionError):
    """Every connection of a client's pool stayed busy past its pool_timeout (an overloaded client)."""


class ServerStartError(RedisoptError):
    """A private server process did not come up; the message carries the tail of its log."""


class DestructiveCommandError(RedisoptError):
    """A flushing or reconfiguring command was refused on a server the user supplied."""
