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


class LockError(RedisoptError):
    """A lock operation failed; ``name`` is the lock's name."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class LockTimeout(LockError, TimeoutError):
    """The lock stayed held by another client until the acquire timeout ran out."""


class LockNotOwnedError(LockError):
    """Release or extend of a lock that is no longer ours (it expired) or never was."""


class StaleTokenError(LockError):
    """A fenced resource refused a write: its fencing ``token`` is older than ``highest`` seen."""

    def __init__(self, message: str, *, name: str | None = None, token: int = 0, highest: int = 0) -> None:
        super().__init__(message, name=name)
        self.token = token
        self.highest = highest


class EncodeError(RedisoptError, TypeError):
    """A codec cannot represent a value; ``type_name`` and ``path`` say which one, ``index`` which item."""

    def __init__(self, message: str, *, codec: str, type_name: str, path: str, index: int | None = None) -> None:
        super().__init__(message)
        self.codec, self.type_name, self.path, self.index = codec, type_name, path, index
        self.sent = 0  # items of the same batch already sent (WorkQueue.put_many sends window by window)

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.index is None else f"{text} (item {self.index} of the batch)"


class RetryLimitExceeded(RedisoptError):
    """An optimistic (WATCH) update lost to concurrent writers more than ``max_retries`` times in a row."""

    def __init__(self, message: str, *, keys: tuple[str, ...], attempts: int) -> None:
        super().__init__(message)
        self.keys = keys
        self.attempts = attempts


def check_timeout(timeout: float | None) -> float | None:
    """Python's timeout convention, checked once for every blocking call (queue, lock, …).

    None waits without limit, 0 does not wait, t > 0 waits up to t seconds; anything else
    (negative, NaN — ``not >=`` refuses it too) is a ValueError naming the value.
    """
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None (wait without limit), 0 (do not wait) or > 0 seconds, not {timeout!r}")
    return timeout
